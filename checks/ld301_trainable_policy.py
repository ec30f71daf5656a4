"""LD301: what is trainable breaks the stage's policy (the LLM trainable in pretrain; LoRA + tunable parts = full fine-tune)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example
from llava_doctor.stages import POLICY_COMPONENTS, STAGE_PURPOSE, TrainingFlags, intended_trainable

from ._launch_examples import ONEVISION, PRETRAIN, QWEN2_7B, SIGLIP_SO400M, launch
from ._live_examples import freeze, hf_llava, live, lora, with_flags

INFERENCE_OPTION = "loaded_for_inference"  # set by `llava-doctor inspect`: requires_grad there is the loader's, not a run's
EXAMPLES_SHOWN = 2


@dataclass(frozen=True)
class PolicyBreach:
    component: str
    trainable: int  # elements with requires_grad (ds_numel under ZeRO-3)
    total: int
    should_train: bool  # what the stage's policy says


def policy_breaches(stage: str, flags: TrainingFlags | None, counts: Mapping[str, tuple[int, int]]) -> list[PolicyBreach]:
    """Components whose trainable elements contradict `stage`'s policy (stages.intended_trainable).

    `counts`: component -> (trainable elements, total elements). A component the policy freezes
    must have no trainable element; a component the policy trains must have some. Components the
    policy does not speak about ("other") and empty ones are not judged.
    """
    policy = intended_trainable(stage, flags)
    breaches = []
    for component in POLICY_COMPONENTS:
        trainable, total = counts.get(component, (0, 0))
        if not total:
            continue
        should_train = policy.get(component, False)
        if should_train != (trainable > 0):
            breaches.append(PolicyBreach(component, trainable, total, should_train))
    return breaches


def _why(stage: str, flags: TrainingFlags | None, breach: PolicyBreach) -> str:
    flags = flags or TrainingFlags()
    if breach.should_train:
        return f"stage {stage} trains the {breach.component}"
    if breach.component == "language_model" and stage == "lora":
        return "stage lora trains the language model through its LoRA adapters only (the base weights stay frozen)"
    if breach.component == "vision_tower" and stage != "pretrain":
        return f"the tower is frozen unless unfreeze_mm_vision_tower or mm_vision_tower in mm_tunable_parts ({STAGE_PURPOSE[stage]})"
    if flags.mm_tunable_parts is not None:
        return f"mm_tunable_parts {','.join(flags.mm_tunable_parts)!r} does not list it ({STAGE_PURPOSE[stage]})"
    return STAGE_PURPOSE[stage]


class TrainablePolicy(Check):
    code = "LD301"
    title = "trainable parameters break the stage's policy"
    artifact = ("LiveModel", "Launch")
    severity = Severity.ERROR
    rationale = """
    Each LLaVA stage trains fixed parts: pretraining (`--tune_mm_mlp_adapter True`) only the
    projector, fine-tuning the projector and the LLM (the vision tower only with
    `unfreeze_mm_vision_tower` or `mm_vision_tower` in LLaVA-NeXT's `mm_tunable_parts`), LoRA the
    adapters and the projector with the base LLM frozen. Nothing fails when a run trains more or
    less: an LLM left trainable in pretraining is silently fine-tuned on captions (haotian-liu/LLaVA
    #1059: "`--tune_mm_mlp_adapter True` shall make LLM weights frozen"; `freeze_backbone` is "not
    for training purposes", #723), and LoRA together with `mm_tunable_parts` trained the whole
    model in LLaVA-NeXT (LLaVA-VL/LLaVA-NeXT#508, "mm_tunable_parts + LoRA = Full-Model Training
    (Unintended)", ~3x the memory; the reverse also happened: LoRA weights frozen when
    `mm_language_model` was not listed). Under ZeRO-3 `p.numel()` is 0 for every parameter, so a
    count of trainable parameters reads 0 unless it uses `ds_numel` (TinyLLaVA_Factory#131); this
    check counts true sizes. The stage is the one given, or the one the model's config flags
    (`tune_mm_mlp_adapter`, `mm_tunable_parts`, `unfreeze_mm_vision_tower`, LoRA modules present)
    imply; with neither, the policy is not checked and the report says so.
    """
    fix = """
    Freeze as the stage says before building the optimizer: for pretraining `model.requires_grad_(False)`
    then `requires_grad_(True)` on the projector only (LLaVA's train.py under `tune_mm_mlp_adapter`);
    with LoRA, let PEFT freeze the base model and enable only the projector / listed tunable parts
    (LLaVA-NeXT commit bfbba5a). Print the per-component table (`llava_doctor.inspect(model)`)
    before the first step, counting `ds_numel` under ZeRO-3.
    """
    valid = (
        Example("launch: LLaVA v1.5 pretrain.sh", launch(PRETRAIN)),
        Example("pretrain: only the projector trains",
                live(lambda: freeze(hf_llava(), "multi_modal_projector"), stage="pretrain")),
        Example("finetune: projector and LLM train, tower frozen",
                live(lambda: freeze(hf_llava(), "multi_modal_projector", "language_model", "lm_head"), stage="finetune")),
        Example("lora inferred from the adapters, projector trainable",
                live(lambda: freeze(lora(hf_llava()), "lora_", "multi_modal_projector"))),
    )
    invalid = (
        Example("launch: pretrain.sh without --tune_mm_mlp_adapter", launch({**PRETRAIN, "tune_mm_mlp_adapter": False}),
                count=2, contains=("language_model: trained", "--version plain is the pretraining template")),
        Example("launch: LoRA + mm_tunable_parts before bfbba5a (LLaVA-NeXT#508)",
                launch({**ONEVISION, "lora_enable": True}, codebase="llava-next", model=QWEN2_7B, tower=SIGLIP_SO400M,
                       lora_fix=False), count=2, contains=("language_model: trained", "lm_head: trained")),
        Example("the LLM left trainable with tune_mm_mlp_adapter (stage from the config)",
                live(lambda: with_flags(hf_llava(), tune_mm_mlp_adapter=True)), count=3,
                contains=("language_model: ", "stage pretrain (inferred: tune_mm_mlp_adapter is set)",
                          "stage pretrain trains only the projector", "lm_head: ", "vision_tower: ")),
        Example("LoRA + mm_tunable_parts trains everything (LLaVA-NeXT#508)",
                live(lambda: freeze(lora(hf_llava()), "")), count=3,
                contains=("vision_tower: ", "language_model: ", "through its LoRA adapters only", "lm_head: ")),
        Example("pretrain with a frozen projector trains nothing",
                live(lambda: freeze(hf_llava(), "nothing"), stage="pretrain"), count=1,
                contains=("projector: 0 of 2,112 parameters are trainable", "stage pretrain trains the projector")),
    )

    def run_live_model(self, artifact, context: Context) -> Iterable[Finding]:
        if context.option(INFERENCE_OPTION):
            return
        if artifact.stage is None:
            yield self.finding(
                f"trainable policy not checked: the stage is {artifact.stage_reason}; pass stage='pretrain'|'finetune'|'lora'",
                artifact=artifact.name, severity=Severity.INFO, observed="stage unknown", expected="a stage",
                fix="Pass the stage the run is in (`llava_doctor.inspect(model, stage=...)`, `--stage`).",
            )
            return
        counts: dict[str, tuple[int, int]] = {}
        names: dict[tuple[str, bool], list[str]] = {}
        for param in artifact.parameters:
            trainable, total = counts.get(param.component, (0, 0))
            counts[param.component] = (trainable + (param.numel if param.requires_grad else 0), total + param.numel)
            names.setdefault((param.component, param.requires_grad), []).append(param.name)
        for breach in policy_breaches(artifact.stage, artifact.flags, counts):
            yield self._finding(artifact, breach, names.get((breach.component, not breach.should_train), []))

    def run_launch(self, artifact, context: Context) -> Iterable[Finding]:
        """The same policy against what the launch's flags make the codebase's train.py train (no model yet)."""
        from llava_doctor.preflight.policy import launch_policy

        policy = launch_policy(artifact, context.stage)
        counts = {component: (int(trained), 1) for component, trained in policy.trainable.items()}
        for breach in policy_breaches(policy.stage, artifact.flags(), counts):
            assumed = f" ({policy.assumption})" if policy.assumption else ""
            yield self.finding(
                f"{breach.component}: {'trained' if breach.trainable else 'frozen'} by these flags in {artifact.codebase}'s "
                f"train.py{assumed} under stage {policy.stage} ({policy.stage_reason}); expected "
                f"{'trainable' if breach.should_train else 'frozen'}: {_why(policy.stage, artifact.flags(), breach)}",
                artifact=artifact.name, location=breach.component, observed="trained" if breach.trainable else "frozen",
                expected="trainable" if breach.should_train else "frozen", component=breach.component,
                stage=policy.stage, severity=Severity.WARNING if policy.assumption else None, phase="epoch")

    def _finding(self, artifact, breach: PolicyBreach, examples: list[str]) -> Finding:
        tensors = f" ({len(examples)} tensor(s), e.g. {', '.join(examples[:EXAMPLES_SHOWN])})" if examples and not breach.should_train else ""
        stage = f"stage {artifact.stage}" + ("" if artifact.stage_reason == "given" else f" ({artifact.stage_reason})")
        message = (f"{breach.component}: {breach.trainable:,} of {breach.total:,} parameters are trainable{tensors} under {stage}; "
                   f"expected {'trainable' if breach.should_train else 'frozen'}: {_why(artifact.stage, artifact.flags, breach)}")
        return self.finding(
            message, artifact=artifact.name, location=examples[0] if examples else breach.component,
            observed={"trainable": breach.trainable, "total": breach.total},
            expected="trainable" if breach.should_train else "frozen",
            component=breach.component, stage=artifact.stage,
        )
