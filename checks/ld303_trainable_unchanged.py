"""LD303: a component the stage trains is byte-identical to the base checkpoint (--deep, --base, --stage)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example
from llava_doctor.compare import STAGE_POLICY, example_names

from ._compare_examples import pair


class TrainableComponentUnchanged(Check):
    code = "LD303"
    title = "a trainable component never changed"
    artifact = "Checkpoint"
    severity = Severity.WARNING
    deep = True
    rationale = """
    A component the stage trains (the projector in every stage, the LLM and lm_head in full
    fine-tuning, the vision tower with `unfreeze_mm_vision_tower`) that is bit-for-bit identical to
    the base after training never received an update: its parameters were not in the optimizer's
    param groups, their learning rate was 0 (a per-component lr such as `mm_projector_lr` or
    `mm_vision_tower_lr` set to 0), every gradient was zero or None (PyTorch then warns
    `UserWarning: None of the inputs have requires_grad=True. Gradients will be None`, e.g.
    LLaVA-VL/LLaVA-NeXT#281 with `'loss': 0.0` at every step), or the run saved the weights it
    started from. Nothing fails and the loss may still fall thanks to the other components. With
    `--base` and `--stage`, this check compares every tensor present in both checkpoints on its
    raw bits and reports a trained component of which no tensor changed; components absent from
    the base (a freshly initialised projector) cannot be compared and are not reported.
    """
    fix = """
    Print the trainable parameters per component before the first step (count `ds_numel` under
    ZeRO-3) and check that the optimizer's param groups contain them with a non-zero learning rate;
    check the gradient norm in the log (`llava-doctor logs trainer_state.json`), and make sure the
    checkpoint was saved after training (for LLaVA's pretraining, `mm_projector.bin` of the last
    step) and not copied from the starting weights.
    """
    valid = (
        Example("finetune: everything trained changed", *pair("finetune", ("projector", "language_model", "lm_head"))),
        Example("pretrain: projector changed, frozen LLM unchanged", *pair("pretrain", ("projector",))),
        Example("pretrain: base has no projector to compare with",
                *pair("pretrain", ("vision_tower",), base_drop=("projector",))),
        Example("no --base: nothing to compare", *pair("finetune", (), base=False)),
    )
    invalid = (
        Example("finetune: LLM and lm_head identical to the base", *pair("finetune", ("projector",)),
                count=2, contains=("language_model: all 3 tensors", "lm_head: all 1 tensors",
                                   "stage finetune trains the language_model")),
        Example("pretrain: the projector never changed", *pair("pretrain", ()),
                count=1, contains=("projector: all 2 tensors", "model.mm_projector.0.bias")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.compare import cached_comparison, expected_changes

        if context.base is None or context.stage not in STAGE_POLICY:
            return
        trains = expected_changes(context.stage, artifact.config)
        comparison = cached_comparison(artifact, context.base, progress=bool(context.option("progress", False)))
        for component, diffs in sorted(comparison.by_component().items()):
            if not trains.get(component) or any(d.changed for d in diffs):
                continue
            message = (
                f"{component}: all {len(diffs)} tensors compared are identical to the base (e.g. {example_names(diffs)}); "
                f"expected changed: stage {context.stage} trains the {component}"
            )
            first = artifact.tensors[diffs[0].name]
            yield self.finding(
                message,
                artifact=artifact.name,
                location=f"{first.file}:{first.name}",
                observed=f"{len(diffs)} tensors unchanged",
                expected="changed by training",
                component=component,
                stage=context.stage,
                tensors=[d.name for d in diffs],
            )
