"""LD302: a component the stage keeps frozen differs from the base checkpoint (--deep, --base, --stage)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example
from llava_doctor.compare import STAGE_POLICY, example_names, format_delta, max_delta, not_compared, tolerance_note

from ._compare_examples import pair

class FrozenComponentChanged(Check):
    code = "LD302"
    title = "a frozen component changed between base and trained checkpoint"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    deep = True
    rationale = """
    Each LLaVA stage trains only some components: the pretraining stage (`--tune_mm_mlp_adapter
    True`) only the projector ("`--tune_mm_mlp_adapter True` shall make LLM weights frozen",
    haotian-liu/LLaVA#1059), fine-tuning keeps the vision tower frozen unless
    `unfreeze_mm_vision_tower`, LoRA keeps the base LLM frozen. When the freeze does not happen
    nothing fails: the loss falls, training only needs more memory (LLaVA-VL/LLaVA-NeXT#508,
    "mm_tunable_parts + LoRA = Full-Model Training (Unintended)", about 3x the VRAM) and the
    frozen weights drift, so the model forgets what the base knew, and in the pretraining stage
    the projector learns against an LLM that LLaVA then throws away (it keeps only
    `mm_projector.bin`). With `--base` and `--stage`, this check compares every tensor present in
    both checkpoints (paired by canonical key, so the layouts may differ) on its raw bits and
    reports each frozen component in which any tensor changed, with the largest |Δ|. A LoRA
    checkpoint without adapter tensors is taken to be merged, and its LLM is then expected to
    differ. A base in another dtype (an fp16 base of a bf16 or fp32 run, the common case) is
    compared value by value within the rounding of the narrower format, so a mere cast is
    "unchanged"; tensors whose shapes differ are not compared. A comparison never passes
    silently: when no tensor could be compared the check says why (an error when both hold the
    same components: their keys or shapes did not pair), a frozen component none of whose tensors
    could be compared is a warning, and without --stage it reports what it compared and that it
    judged nothing. `--base` implies `--deep`; what each comparison covered, per component, is in
    the report's statistics (`comparisons`).
    """
    fix = """
    Make the freeze happen and verify it before training: LLaVA freezes with
    `model.requires_grad_(False)` and then sets `requires_grad=True` on the projector under
    `tune_mm_mlp_adapter`; `freeze_backbone` is NOT the freeze flag (haotian-liu/LLaVA#723). In
    LLaVA-NeXT, `mm_tunable_parts` together with LoRA trained the whole model before commit bfbba5a
    (LLaVA-VL/LLaVA-NeXT#508). Print the trainable parameters per component (count `ds_numel`
    under ZeRO-3, where `numel()` is 0) and check the optimizer's param groups.
    """
    valid = (
        Example("pretrain: only the projector changed", *pair("pretrain", ("projector",))),
        Example("finetune: LLM and projector changed, tower frozen",
                *pair("finetune", ("projector", "language_model", "lm_head"))),
        Example("finetune with unfreeze_mm_vision_tower: the tower changed",
                *pair("finetune", ("vision_tower", "projector", "language_model"),
                      config={"unfreeze_mm_vision_tower": True})),
        Example("no --base: nothing to compare", *pair("pretrain", ("language_model",), base=False)),
        Example("fp16 base of an fp32 run: the frozen tower is a mere cast",
                *pair("pretrain", ("projector",), base_dtype="float16")),
    )
    invalid = (
        Example("pretrain: the LLM and lm_head trained", *pair("pretrain", ("projector", "language_model", "lm_head")),
                count=2, contains=("language_model: 3 of 3 tensors", "lm_head: 1 of 1 tensors differ", "max |Δ| 0.25",
                                   "stage pretrain trains only the projector")),
        Example("finetune: the vision tower trained", *pair("finetune", ("vision_tower", "language_model")),
                count=1, contains=("vision_tower: 2 of 2", "fc1.weight", "stage finetune")),
        Example("base in transformers 5.x layout, trained in original LLaVA layout",
                *pair("pretrain", ("language_model",), base_hf=True),
                count=1, contains=("language_model: 3 of 3", "model.embed_tokens.weight")),
        Example("fp16 base of an fp32 run: the LLM trained in pretrain",
                *pair("pretrain", ("projector", "language_model"), base_dtype="float16"),
                count=1, contains=("language_model: 3 of 3 tensors differ", "compared across dtypes within")),
        Example("no --stage: what was compared, and that nothing was judged",
                *pair(None, ("language_model", "vision_tower")), count=1,
                contains=("vision_tower 2 of 2 (2 changed)", "no --stage given")),
        Example("nothing comparable although both hold the same components", *pair(
            "pretrain", (), base_reshaped=("vision_tower", "projector", "language_model", "lm_head")), count=1,
                contains=("nothing compared with the base", "0 tensors could be compared", "shape [16, 8] vs base [17, 8]")),
        Example("the base shares no component", *pair("pretrain", (), base_drop=(
            "vision_tower", "projector", "language_model", "lm_head")), count=1,
                contains=("shares no component",)),
        Example("a frozen component whose tensors could not be compared", *pair(
            "finetune", ("projector", "language_model", "lm_head"), base_reshaped=("vision_tower",)), count=1,
                contains=("vision_tower: none of its 2 tensors could be compared", "stayed frozen was not checked")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.compare import cached_comparison, expected_changes

        if context.base is None:
            return
        comparison = cached_comparison(artifact, context.base, progress=bool(context.option("progress", False)))
        coverage = comparison.coverage()
        if not comparison.tensors:
            yield self._nothing_compared(artifact, context, coverage)
            return
        if context.stage not in STAGE_POLICY:
            yield self._no_stage(artifact, context, coverage)
            return
        trains = expected_changes(context.stage, artifact.config)
        frozen = {component for component, trained in trains.items() if not trained}
        if context.stage == "lora" and "lora" not in artifact.components_present():
            frozen -= {"language_model", "lm_head"}  # adapters merged into the weights: the LLM differs by design
        for component, diffs in sorted(comparison.by_component().items()):
            changed = [d for d in diffs if d.changed]
            if component not in frozen or not changed:
                continue
            yield self._finding(artifact, context, component, diffs, changed)
        for component, cov in sorted(coverage.items()):
            if component in frozen and cov.in_base and not cov.compared:
                yield self._not_checked(artifact, context, cov)

    def _nothing_compared(self, artifact, context: Context, coverage) -> Finding:
        """The base given, and not one tensor compared: say why instead of a silent pass."""
        shared = [c for c, cov in coverage.items() if cov.in_base]
        counts = ", ".join(f"{c} {cov.tensors}" for c, cov in sorted(coverage.items())) or "none"
        base = context.base
        if shared:
            first = coverage[shared[0]]
            message = (f"nothing compared with the base {base.name}: both hold {', '.join(shared)}, but 0 tensors could be "
                       f"compared ({first.component}: {not_compared(first)}); layouts {artifact.layout} vs {base.layout}; "
                       f"expected the shared components compared")
            severity = Severity.ERROR
        else:
            message = (f"nothing compared with the base {base.name}: it shares no component with this checkpoint "
                       f"(this one holds {counts}; the base holds {', '.join(sorted(_components(base))) or 'nothing'}); "
                       f"expected a base that holds the components to check")
            severity = Severity.WARNING
        return self.finding(message, artifact=artifact.name, location=base.name, severity=severity,
                            observed="0 tensors compared", expected="tensors compared",
                            coverage={c: cov.as_dict() for c, cov in coverage.items()})

    def _no_stage(self, artifact, context: Context, coverage) -> Finding:
        counts = ", ".join(f"{c} {cov.compared} of {cov.tensors} ({cov.changed} changed)" for c, cov in sorted(coverage.items()))
        return self.finding(
            f"compared with the base {context.base.name}: {counts}; no --stage given, so no component is expected to be "
            f"frozen or trained and none was judged; expected --stage pretrain|finetune|lora",
            artifact=artifact.name, location=context.base.name, severity=Severity.INFO,
            observed="no stage", expected="--stage", coverage={c: cov.as_dict() for c, cov in coverage.items()},
            fix="Pass the stage that produced the checkpoint (--stage pretrain, finetune or lora) to check which "
                "components moved against what that stage trains.",
        )

    def _not_checked(self, artifact, context: Context, cov) -> Finding:
        return self.finding(
            f"{cov.component}: none of its {cov.tensors} tensors could be compared with the base ({not_compared(cov)}), so "
            f"whether it stayed frozen was not checked; expected them compared: {STAGE_POLICY[context.stage]}",
            artifact=artifact.name, location=cov.component, severity=Severity.WARNING,
            observed="0 compared", expected=f"{cov.tensors} compared", component=cov.component, stage=context.stage,
        )

    def _finding(self, artifact, context: Context, component: str, diffs, changed) -> Finding:
        delta = format_delta(max_delta(changed))
        message = (
            f"{component}: {len(changed)} of {len(diffs)} tensors differ from the base "
            f"(e.g. {example_names(changed)}), max |Δ| {delta}{tolerance_note(diffs)}; expected unchanged: "
            f"{STAGE_POLICY[context.stage]}"
        )
        first = artifact.tensors[changed[0].name]
        return self.finding(
            message,
            artifact=artifact.name,
            location=f"{first.file}:{first.name}",
            observed=f"{len(changed)} changed, max |Δ| {delta}",
            expected="unchanged",
            component=component,
            stage=context.stage,
            tensors=[d.name for d in changed],
            max_abs_diff=max_delta(changed),
        )


def _components(checkpoint) -> set[str]:
    from llava_doctor.compare import pairing_keys

    return {checkpoint.tensors[name].component for name in pairing_keys(checkpoint).values()}
