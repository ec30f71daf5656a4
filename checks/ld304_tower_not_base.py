"""LD304: a frozen vision tower that is not the base tower its config names (--deep)."""
from __future__ import annotations

import os
from typing import Any, Iterable

from llava_doctor.findings import Finding, InputError, Severity
from llava_doctor.layout import config_kind, vision_tower_unfrozen
from llava_doctor.registry import Check, Context, Example
from llava_doctor.compare import example_names, format_delta, max_delta

from ._compare_examples import tower_pair

BASE_TOWER_NOTE = "base_tower"
BASE_OPTION = "vision_tower_base"  # a Checkpoint standing in for the folder mm_vision_tower names


def tower_reference(config: dict | None) -> str | None:
    """The base tower an original-LLaVA config names (`mm_vision_tower`).

    Only original-LLaVA configs: they record whether the tower was trained (`unfreeze_mm_vision_tower`,
    `mm_tunable_parts`); a transformers config does not, so a tuned tower there would look wrong.
    """
    if config_kind(config) != "llava-original":
        return None
    reference = config.get("mm_vision_tower")
    return reference if isinstance(reference, str) and reference else None


def freeze_reason(config: dict | None) -> str:
    """Why the config says the tower is frozen, in its own field names."""
    config = config or {}
    if config.get("mm_tunable_parts"):
        return f"mm_tunable_parts {config['mm_tunable_parts']!r} lacks mm_vision_tower"
    return "unfreeze_mm_vision_tower false"


def open_base_tower(artifact) -> tuple[str, Any] | None:
    """(where, Checkpoint) of the local base tower `mm_vision_tower` names; None if it does not resolve here."""
    from llava_doctor.artifacts.readers import open_checkpoint
    from llava_doctor.schema import resolve_local_tower

    if BASE_TOWER_NOTE in artifact.notes:
        return artifact.notes[BASE_TOWER_NOTE]
    found = None
    reference = tower_reference(artifact.config)
    local = resolve_local_tower(reference, artifact.root)
    if local is not None and os.path.realpath(local) != os.path.realpath(artifact.root):
        try:
            base = open_checkpoint(local)
        except InputError:
            base = None
        if base is not None and base.tensors:
            found = (reference, base)
    artifact.notes[BASE_TOWER_NOTE] = found
    return found


class TowerNotBase(Check):
    code = "LD304"
    title = "vision tower not loaded or randomly initialised"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    deep = True
    rationale = """
    Original LLaVA and LLaVA-NeXT keep the vision tower frozen unless `unfreeze_mm_vision_tower`
    (or `mm_vision_tower` in `mm_tunable_parts`) and rebuild it from the encoder `mm_vision_tower`
    names, so a frozen tower must equal that base encoder bit for bit. When it does not, the tower
    was never loaded: LLaVA-NeXT builds the tower eagerly (`delay_load` defaults to False; its
    builder sets it only for "v1.5" names) inside `from_pretrained`, where the load is a no-op on
    the meta device; a checkpoint without tower weights then leaves the tower uninitialised
    (transformers 4.37: measured mean -inf) or, in transformers 5, randomly initialised with only a
    LOAD REPORT line calling the keys MISSING ("newly initialized"), and the builder's
    `if not vision_tower.is_loaded: vision_tower.load_model()` skips the real load because the
    tower already says it is loaded. Nothing fails; the model answers `'!!!!...'`
    (LLaVA-VL/LLaVA-NeXT#285, fixed by "delay_load=True in the llava_arch.py") or stops looking at
    the picture. The same happens whenever `mm_vision_tower` names a different encoder than the
    one trained with. With --deep, when `mm_vision_tower` is a local folder with weights, this
    check compares the checkpoint's tower tensors with it (paired by canonical key, on raw bits)
    and reports when most of them differ. A reference that does not resolve locally (a hub id) is
    not guessed at, and tensors whose dtype differs from the base's are not compared.
    """
    fix = """
    Load the tower after the weights: set `delay_load=True` in the config (or in
    `LlavaMetaModel.__init__`) so that `from_pretrained` builds no tower and the builder's
    `vision_tower.load_model()` loads `mm_vision_tower`; or save the tower in the checkpoint.
    Check that `mm_vision_tower` names the encoder the model was trained with.
    """
    valid = (
        Example("the frozen tower equals the base tower", *tower_pair("base")),
        Example("the tower was trained (unfreeze_mm_vision_tower)",
                *tower_pair("random", config={"unfreeze_mm_vision_tower": True})),
        Example("the tower was trained (mm_tunable_parts)",
                *tower_pair("random", config={"mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter"})),
        Example("mm_vision_tower does not resolve to a local folder", *tower_pair("random", base=False)),
        Example("one of two tower tensors differs (not most: LD302's business with --base)", *tower_pair("one")),
    )
    invalid = (
        Example("a random tower in a frozen-tower checkpoint", *tower_pair("random"),
                count=1, contains=("vision_tower: 2 of 2 tensors differ from the base tower at /nonexistent-example/base-tower",
                                   "fc1.weight", "unfreeze_mm_vision_tower false", "delay_load")),
        Example("base tower keys without the vision_model. level",
                *tower_pair("random", base_vision_model=False, config={"mm_tunable_parts": "mm_mlp_adapter"}),
                count=1, contains=("2 of 2 tensors", "mm_tunable_parts 'mm_mlp_adapter' lacks mm_vision_tower")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.compare import compare_checkpoints

        if vision_tower_unfrozen(artifact.config) or tower_reference(artifact.config) is None:
            return
        if not artifact.by_component().get("vision_tower"):
            return
        override = context.option(BASE_OPTION)
        found = (tower_reference(artifact.config), override) if override is not None else open_base_tower(artifact)
        if found is None:
            return
        where, base = found
        comparison = compare_checkpoints(artifact, base, progress=bool(context.option("progress", False)))
        diffs = comparison.by_component().get("vision_tower", [])
        changed = [d for d in diffs if d.changed]
        if not diffs or len(changed) * 2 <= len(diffs):
            return
        yield self._finding(artifact, where, diffs, changed)

    def _finding(self, artifact, where: str, diffs, changed) -> Finding:
        largest = max_delta(changed)
        delta = format_delta(largest)
        message = (
            f"vision_tower: {len(changed)} of {len(diffs)} tensors differ from the base tower at {where} "
            f"(e.g. {example_names(changed)}), max |Δ| {delta}; the tower is frozen in this run "
            f"({freeze_reason(artifact.config)}), so it should equal the base: it was randomly initialised "
            f"or never loaded (delay_load)"
        )
        first = artifact.tensors[changed[0].name]
        return self.finding(
            message,
            artifact=artifact.name,
            location=f"{first.file}:{first.name}",
            observed=f"{len(changed)} of {len(diffs)} tensors differ, max |Δ| {delta}",
            expected=f"equal to {where}",
            component="vision_tower",
            base_tower=where,
            tensors=[d.name for d in changed],
            max_abs_diff=largest,
        )
