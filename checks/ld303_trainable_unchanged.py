"""LD303: a component the stage trains is byte-identical to the base checkpoint (--deep, --base, --stage)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example
from llava_doctor.compare import EXAMPLES_SHOWN, STAGE_POLICY, example_names, not_compared, tolerance_note

from ._compare_examples import pair
from ._live_examples import adamw_trainable, freeze, freeze_tower_after_adamw, hf_llava, live, unfreeze_projector_after_adamw


class TrainableComponentUnchanged(Check):
    code = "LD303"
    title = "a trainable component never changed"
    artifact = ("Checkpoint", "LiveModel")
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
    raw bits (across dtypes: within the rounding of the narrower format) and reports a trained
    component of which no tensor changed; components absent from the base (a freshly initialised
    projector) cannot be compared and are not reported, but a trained component the base holds
    whose tensors could not be compared at all (keys or shapes that do not pair) is a warning:
    whether it trained was not checked.
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
        Example("live: the optimizer holds exactly the trainable parameters",
                live(lambda: freeze(hf_llava(), "multi_modal_projector"), stage="pretrain", optimizer=adamw_trainable)),
    )
    invalid = (
        Example("finetune: LLM and lm_head identical to the base", *pair("finetune", ("projector",)),
                count=2, contains=("language_model: all 3 tensors", "lm_head: all 1 tensors",
                                   "stage finetune trains the language_model")),
        Example("pretrain: the projector never changed", *pair("pretrain", ()),
                count=1, contains=("projector: all 2 tensors", "model.mm_projector.0.bias")),
        Example("finetune: the LLM's tensors could not be compared with the base",
                *pair("finetune", ("projector", "lm_head"), base_reshaped=("language_model",)),
                count=1, contains=("language_model: none of its 3 tensors could be compared", "was not checked")),
        Example("live: the projector unfrozen after the optimizer was built", live(lambda: freeze(hf_llava(), "language_model", "lm_head"), stage="finetune",
                                                                         optimizer=unfreeze_projector_after_adamw),
                count=1, contains=("projector: 4 trainable tensor(s) are not in the optimizer's param groups (AdamW.param_groups)",
                                   "2,112 parameters", "multi_modal_projector.linear_1.weight")),
        Example("live: the tower frozen after the optimizer was built",
                live(lambda: hf_llava(), stage="finetune", optimizer=freeze_tower_after_adamw),
                count=1, contains=("vision_tower: 39 frozen tensor(s) are in the optimizer's param groups",)),
    )

    def run_checkpoint(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.compare import cached_comparison, expected_changes

        if context.base is None or context.stage not in STAGE_POLICY:
            return
        trains = expected_changes(context.stage, artifact.config)
        comparison = cached_comparison(artifact, context.base, progress=bool(context.option("progress", False)))
        if comparison.tensors:  # nothing compared at all is LD302's one finding
            for component, cov in sorted(comparison.coverage().items()):
                if trains.get(component) and cov.in_base and not cov.compared:
                    yield self.finding(
                        f"{component}: none of its {cov.tensors} tensors could be compared with the base "
                        f"({not_compared(cov)}), so whether it trained was not checked; expected them compared: "
                        f"stage {context.stage} trains the {component}",
                        artifact=artifact.name, location=component, severity=Severity.WARNING, observed="0 compared",
                        expected=f"{cov.tensors} compared", component=component, stage=context.stage,
                    )
        for component, diffs in sorted(comparison.by_component().items()):
            if not trains.get(component) or any(d.changed for d in diffs):
                continue
            message = (
                f"{component}: all {len(diffs)} tensors compared are identical to the base (e.g. {example_names(diffs)})"
                f"{tolerance_note(diffs)}; expected changed: stage {context.stage} trains the {component}"
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

    def run_live_model(self, artifact, context: Context) -> Iterable[Finding]:
        """Live: the optimizer given must hold exactly the trainable parameters (the cause the rationale names first)."""
        if artifact.optimizer is None:
            return
        members = artifact.optimizer.members
        left_out: dict[str, list] = {}
        frozen_in: dict[str, list] = {}
        for param, handle in zip(artifact.parameters, artifact.handles):
            if param.requires_grad and id(handle) not in members:
                left_out.setdefault(param.component, []).append(param)
            elif not param.requires_grad and id(handle) in members:
                frozen_in.setdefault(param.component, []).append(param)
        where = f"the optimizer's param groups ({artifact.optimizer.kind}.{artifact.optimizer.source})"
        for component, params in sorted(left_out.items()):
            yield self._membership(artifact, component, params, f"trainable tensor(s) are not in {where}",
                                   "in the optimizer: they get gradients and are never updated", Severity.ERROR)
        for component, params in sorted(frozen_in.items()):
            yield self._membership(artifact, component, params, f"frozen tensor(s) are in {where}",
                                   "only trainable parameters there (requires_grad was changed after the optimizer was built)",
                                   Severity.WARNING)

    def _membership(self, artifact, component: str, params: list, what: str, expected: str, severity: Severity) -> Finding:
        shown = ", ".join(p.name for p in params[:EXAMPLES_SHOWN]) + (", ..." if len(params) > EXAMPLES_SHOWN else "")
        return self.finding(
            f"{component}: {len(params)} {what} ({sum(p.numel for p in params):,} parameters, e.g. {shown}); expected {expected}",
            artifact=artifact.name, location=params[0].name, severity=severity,
            observed=f"{len(params)} tensors", expected=expected, component=component, tensors=[p.name for p in params],
        )
