"""LD304: a frozen vision tower that is not the base tower its config names (--deep)."""
from __future__ import annotations

import os
from typing import Any, Iterable

from llava_doctor.findings import Finding, InputError, Severity
from llava_doctor.layout import config_kind, vision_tower_unfrozen
from llava_doctor.registry import Check, Context, Example
from llava_doctor.compare import example_names, format_delta, max_delta

from ._checkpoint_examples import checkpoint, original_llava, original_llava_config
from ._compare_examples import tower_pair
from ._live_examples import live, trained_tower
from ._live_examples import hf_llava as hf_llava_live

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


def eager_load_without_weights(artifact):
    """The TowerLoad when the loader will build the tower eagerly and the checkpoint holds no tower weights, else None."""
    from llava_doctor.tower_loading import tower_load

    if config_kind(artifact.config) != "llava-original" or artifact.by_component().get("vision_tower"):
        return None
    if not artifact.tensors or artifact.is_lone_shard():
        return None  # nothing read, or one shard of a set: the tower may be in another shard
    load = tower_load(artifact.config, root=artifact.root)
    return load if load is not None and load.eager else None


def differs_from_base(changed: int, compared: int, where: str, examples: str, delta: str, reason: str) -> str:
    return (f"vision_tower: {changed} of {compared} tensors differ from the base tower at {where} (e.g. {examples}), "
            f"max |Δ| {delta}; the tower is frozen in this run ({reason}), so it should equal the base: it was randomly "
            f"initialised or never loaded (delay_load)")


class TowerNotBase(Check):
    code = "LD304"
    title = "vision tower not loaded or randomly initialised"
    artifact = ("Checkpoint", "LiveModel")
    severity = Severity.ERROR
    deep = False  # the loader prediction reads no data; the comparison with the base tower runs with --deep
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
    not guessed at; tensors whose dtype differs from the base's are compared within the rounding of
    the narrower format. Without --deep, and without reading any data, the check also predicts the
    trap from the config: a checkpoint without tower weights whose loader builds the tower eagerly
    (LLaVA-NeXT without `delay_load`, or any LLaVA with `unfreeze_mm_vision_tower`) will hold an
    uninitialised or random tower after loading.
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
        Example("live: a transformers Llava whose tower left its initialisation (trained)",
                live(lambda: trained_tower(hf_llava_live()), stage="finetune")),
        Example("LLaVA-NeXT checkpoint without tower weights, delay_load true",
                lambda: checkpoint(original_llava(), config=original_llava_config(delay_load=True))),
        Example("original LLaVA checkpoint without tower weights (always delay-loaded)",
                lambda: checkpoint(original_llava(), config=original_llava_config())),
    )
    invalid = (
        Example("a random tower in a frozen-tower checkpoint", *tower_pair("random"),
                count=1, contains=("vision_tower: 2 of 2 tensors differ from the base tower at /nonexistent-example/base-tower",
                                   "fc1.weight", "unfreeze_mm_vision_tower false", "delay_load")),
        Example("base tower keys without the vision_model. level",
                *tower_pair("random", base_vision_model=False, config={"mm_tunable_parts": "mm_mlp_adapter"}),
                count=1, contains=("2 of 2 tensors", "mm_tunable_parts 'mm_mlp_adapter' lacks mm_vision_tower")),
        Example("LLaVA-NeXT checkpoint without tower weights, delay_load false (no --deep needed)",
                lambda: checkpoint(original_llava(), config=original_llava_config(delay_load=False)), count=1,
                contains=("no tower weights in this checkpoint", "LLaVA-NeXT: delay_load is false", "'!!!!'")),
        Example("Qwen LLaVA-NeXT projector-only checkpoint, delay_load unset",
                lambda: checkpoint(original_llava(llm=False), file="mm_projector.bin",
                                   config=original_llava_config(architectures=["LlavaQwenForCausalLM"])), count=1,
                contains=("delay_load is unset (LLaVA-NeXT's default: false)",)),
        Example("live: a transformers Llava built from its config (no base reachable)", live(hf_llava_live, stage="finetune"),
                count=1, contains=("vision_tower: 39 of 39 tensors have the statistics of a fresh initialisation of its class",)),
    )

    def run_checkpoint(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.compare import compare_checkpoints

        eager = eager_load_without_weights(artifact)
        if eager is not None:
            yield self._eager_finding(artifact, eager)
        if not context.deep or vision_tower_unfrozen(artifact.config) or tower_reference(artifact.config) is None:
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

    def _eager_finding(self, artifact, load) -> Finding:
        return self.finding(
            f"vision_tower: no tower weights in this checkpoint, and the loader its config implies builds the tower "
            f"eagerly inside from_pretrained ({load.codebase}: {load.why}): that load is a no-op on the meta device and "
            f"the builder then skips load_model() because the tower says it is loaded, so the tower stays uninitialised "
            f"(transformers 4.x: garbage, the '!!!!' outputs) or random (transformers 5); expected tower weights in the "
            f"checkpoint or a delay-loaded tower (\"delay_load\": true) that loads mm_vision_tower={load.reference!r}",
            artifact=artifact.name, location="config.json", observed=f"eager tower load ({load.why}), no tower weights",
            expected="tower weights or delay_load", component="vision_tower", loader=load.codebase,
            fix="Set \"delay_load\": true in config.json (LLaVA-NeXT's LlavaMetaModel reads it; its builder sets it "
                "only for model names containing v1.5), so that from_pretrained builds no tower and the builder's "
                "load_model() loads mm_vision_tower after the weights; a tower that was trained "
                "(unfreeze_mm_vision_tower) must be saved with the checkpoint instead.",
        )

    def _finding(self, artifact, where: str, diffs, changed) -> Finding:
        largest = max_delta(changed)
        delta = format_delta(largest)
        message = differs_from_base(len(changed), len(diffs), where, example_names(changed), delta, freeze_reason(artifact.config))
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

    # ------------------------------------------------------------------ live models

    def run_live_model(self, artifact, context: Context) -> Iterable[Finding]:
        """Live: the wrapper's state, then the values: garbage, equal to the base tower (when one is reachable),
        a fresh initializer's statistics; and the tower class against the checkpoint mm_vision_tower names."""
        from llava_doctor.artifacts.live import load_evidence
        from llava_doctor.artifacts.live_stats import ValueStats

        tower = artifact.tower
        if tower.loaded is False:
            yield self._not_loaded(artifact)
            return
        indices = artifact.by_component().get("vision_tower", [])
        if not indices:
            return
        family_finding = self._wrong_family(artifact)
        if family_finding is not None:
            yield family_finding
        values = artifact.values()
        readable = [i for i in indices if isinstance(values[i], ValueStats)]
        if not readable:
            return  # meta / offloaded: LD204 says the values were not read
        evidence = load_evidence(artifact, context.option("load_report"), "vision_tower")
        garbage = [i for i in readable if not values[i].finite or values[i].max_abs > GARBAGE_ABS]
        matrices = [i for i in readable if len(artifact.parameters[i].shape) >= 2]
        zeros = [i for i in matrices if values[i].all_zero]  # fresh zero pages: no initializer or training gives these
        if len(garbage) * 2 > len(readable) or (matrices and len(zeros) == len(matrices)):
            yield self._garbage(artifact, readable, garbage or zeros, values, evidence)
            return
        fresh = fresh_init_match(artifact, readable, values)
        compared = self._compare_with_base(artifact, context, readable)
        if compared is not None:
            where, deltas = compared
            changed = [i for i, d in deltas.items() if d.differing]
            if deltas and len(changed) * 2 > len(deltas):
                yield self._live_differs(artifact, where, deltas, changed, fresh, evidence)
                return
            if deltas:
                return  # equal to its base: whatever its statistics, it is the base
        if fresh is not None:
            yield self._fresh(artifact, readable, fresh, evidence)

    def _not_loaded(self, artifact) -> Finding:
        tower = artifact.tower
        why = ("built with delay_load and load_model() never called" if tower.delay_load
               else "load_model() was never called")
        return self.finding(
            f"vision tower not loaded: {tower.wrapper}.is_loaded is False ({why}), so the model holds no tower weights "
            f"and images cannot be encoded; expected a loaded tower ({tower.reference or 'mm_vision_tower'})",
            artifact=artifact.name, location="model.vision_tower", observed={"is_loaded": False, "delay_load": tower.delay_load},
            expected="is_loaded True", component="vision_tower",
            fix="Call `model.get_vision_tower().load_model()` after `from_pretrained` when `is_loaded` is False (LLaVA's "
                "builder does `if not vision_tower.is_loaded: vision_tower.load_model()`), or build with delay_load=False.",
        )

    def _garbage(self, artifact, readable, garbage, values, evidence: str) -> Finding:
        first = garbage[0]
        stats = values[first]
        shown = (f"{stats.nan:,} NaN / {stats.inf:,} Inf" if not stats.finite else f"max |x| {stats.max_abs:.3g}")
        return self.finding(
            f"vision_tower holds garbage: {len(garbage)} of {len(readable)} tensors are non-finite, absurd or all-zero matrices "
            f"(e.g. {artifact.parameters[first].name}: {shown}, mean {stats.mean:.3g}); expected loaded weights: "
            f"uninitialised memory, as an eager tower load inside from_pretrained leaves it{evidence}",
            artifact=artifact.name, location=artifact.parameters[first].name, observed=f"{len(garbage)} tensors garbage",
            expected="finite weights of the base tower", component="vision_tower",
            tensors=[artifact.parameters[i].name for i in garbage],
        )

    def _compare_with_base(self, artifact, context: Context, readable):
        """(where, deltas) against the base tower, or None when there is no reachable base or the tower trains."""
        from llava_doctor.artifacts.live import LiveModel
        from llava_doctor.artifacts.live_compare import compare_with_checkpoint, compare_with_module

        if artifact.flags.tower_trained and not context.option(TRAIN_START_OPTION):
            return None
        base = context.base
        if isinstance(base, LiveModel) and "vision_tower" in base.components_present():
            deltas, _ = compare_with_module(artifact, readable, base)
            return base.name, deltas
        if base is not None and not isinstance(base, LiveModel) and base.by_component().get("vision_tower"):
            deltas, _ = compare_with_checkpoint(artifact, readable, base)
            return base.name, deltas
        found = open_base_tower(artifact.shape_view())
        if found is None:
            return None
        where, checkpoint = found
        deltas, _ = compare_with_checkpoint(artifact, readable, checkpoint)
        return where, deltas

    def _live_differs(self, artifact, where: str, deltas, changed, fresh, evidence: str) -> Finding:
        largest = max((deltas[i].max_abs_diff for i in changed if deltas[i].max_abs_diff == deltas[i].max_abs_diff),
                      default=float("nan"))
        names = [artifact.parameters[i].name for i in changed]
        examples = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
        message = differs_from_base(len(changed), len(deltas), where, examples, format_delta(largest), freeze_reason(artifact.config))
        if fresh is not None:
            message += f"; its values are a fresh {fresh[0]}"
        message += evidence
        return self.finding(
            message, artifact=artifact.name, location=names[0], observed=f"{len(changed)} of {len(deltas)} tensors differ",
            expected=f"equal to {where}", component="vision_tower", base_tower=where, tensors=names, max_abs_diff=largest,
        )

    def _fresh(self, artifact, readable, fresh, evidence: str) -> Finding:
        initializer, matched = fresh
        return self.finding(
            f"vision_tower: {matched} of {len(readable)} tensors have the statistics of a fresh {initializer} "
            f"(norm layers exactly 1 and 0, weights with the initializer's std); expected trained tower weights: "
            f"the tower was built but its weights never loaded (no base tower reachable here to compare with){evidence}",
            artifact=artifact.name, location=artifact.parameters[readable[0]].name, observed=f"{matched} tensors as initialised",
            expected="trained weights", component="vision_tower", initializer=initializer,
        )

    def _wrong_family(self, artifact) -> Finding | None:
        from llava_doctor.files import read_json
        from llava_doctor.schema import resolve_local_tower, vision_family_of_config

        held = artifact.tower.model_class or ""
        held_family = "siglip" if "siglip" in held.lower() else "clip" if "clip" in held.lower() else None
        reference = artifact.tower.reference
        if held_family is None or not reference:
            return None
        local = resolve_local_tower(reference)
        config = {}
        if local is not None:
            try:
                config = read_json(f"{local}/config.json")
            except Exception:  # an unreadable tower config: the name alone decides
                config = {}
        vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else config
        named = vision_family_of_config(vision if isinstance(vision, dict) else {}, reference)
        if named is None or named == held_family:
            return None
        return self.finding(
            f"vision tower is a {held} but mm_vision_tower {reference} is a {named.upper()} checkpoint; expected a "
            f"{named.upper()} class: the builder picked the {held_family.upper()} class for it (LLaVA-NeXT picks "
            f"CLIPVisionTower for any local path), so the weights that fit were loaded into the wrong architecture",
            artifact=artifact.name, location="model.vision_tower", observed=held, expected=f"{named} vision model",
            component="vision_tower",
            fix="Name the tower so that the builder picks its class (a path containing 'siglip' before the local-path "
                "test, LLaVA-VL/LLaVA-NeXT#303), or build SigLipVisionTower explicitly.",
        )


GARBAGE_ABS = 1e4  # no trained or initialised weight of a vision tower comes near this
TRAIN_START_OPTION = "at_train_start"  # the callback's train-start inspection: a tower about to train still equals its base
FRESH_SHARE = 0.9


def fresh_init_match(artifact, readable: list[int], values) -> tuple[str, int] | None:
    """(initializer, tensors matching it) when the tower's values are those of a fresh initialisation, else None.

    Two initializers are tried: the tower class's own (`_init_weights` on a fresh build of the same class and
    config, one layer materialised), and transformers' generic one for keys missing at load (normal with the
    model's initializer_range, zero biases). Norm layers must sit exactly at 1 and 0, as every initializer leaves
    them and no training does; that test runs first and costs nothing.
    """
    from llava_doctor.artifacts.live_compare import initializer_reference, matches_reference, std_tolerance

    norms = [i for i in readable if "Norm" in artifact.parameters[i].module_type]
    if not norms or not all(values[i].constant for i in norms):
        return None
    tower = artifact.modules.get("tower")
    relative = {}
    if tower is not None:
        ids = {id(h): i for i, h in enumerate(artifact.handles)}
        relative = {ids[id(p)]: n for n, p in tower.named_parameters() if id(p) in ids}
    reference = initializer_reference(tower, [relative[i] for i in readable if i in relative]) if relative else {}
    reference = reference if isinstance(reference, dict) else {}
    own = sum(1 for i in readable if i in relative and relative[i] in reference and matches_reference(values[i], reference[relative[i]]))
    ranges = {r for r in (_initializer_range(artifact.config), getattr(getattr(tower, "config", None), "initializer_range", None))
              if isinstance(r, (int, float)) and r > 0}
    best = ("initialisation of its class", own)
    for std in ranges:
        generic = 0
        for i in readable:
            stats, param = values[i], artifact.parameters[i]
            if "Norm" in param.module_type or param.name.endswith("bias"):
                generic += stats.constant and stats.min == (1.0 if param.name.endswith("weight") and "Norm" in param.module_type else 0.0)
            elif stats.finite and stats.count > 1:
                generic += (abs(stats.std / std - 1.0) <= std_tolerance(stats.count)
                            and abs(stats.mean) <= 6.0 * std / stats.count ** 0.5)
        if generic > best[1]:
            best = (f"normal(0, {std:g}) initialisation with zero biases (transformers' init of missing keys)", generic)
    return best if best[1] >= FRESH_SHARE * len(readable) else None


def _initializer_range(config: dict) -> float | None:
    value = config.get("initializer_range")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("initializer_range")
    return value
