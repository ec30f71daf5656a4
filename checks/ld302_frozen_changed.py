"""LD302: a component the stage keeps frozen differs from the base checkpoint (--deep, --base, --stage)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example
from llava_doctor.compare import STAGE_POLICY, example_names, format_delta, max_delta

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
    differ; tensors whose shape or dtype differ from the base are not compared.
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
        Example("no --stage: nothing is expected frozen", *pair(None, ("language_model", "vision_tower"))),
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
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.compare import cached_comparison, expected_changes

        if context.base is None or context.stage not in STAGE_POLICY:
            return
        trains = expected_changes(context.stage, artifact.config)
        frozen = {component for component, trained in trains.items() if not trained}
        if context.stage == "lora" and "lora" not in artifact.components_present():
            frozen -= {"language_model", "lm_head"}  # adapters merged into the weights: the LLM differs by design
        comparison = cached_comparison(artifact, context.base, progress=bool(context.option("progress", False)))
        for component, diffs in sorted(comparison.by_component().items()):
            changed = [d for d in diffs if d.changed]
            if component not in frozen or not changed:
                continue
            yield self._finding(artifact, context, component, diffs, changed)

    def _finding(self, artifact, context: Context, component: str, diffs, changed) -> Finding:
        delta = format_delta(max_delta(changed))
        message = (
            f"{component}: {len(changed)} of {len(diffs)} tensors differ from the base "
            f"(e.g. {example_names(changed)}), max |Δ| {delta}; expected unchanged: {STAGE_POLICY[context.stage]}"
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
