"""LD503: non-finite logits or activations during generation, with the first module that produced them."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.generation import Generation
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._generation_examples import ANSWER, generation


def _steps(steps: tuple[int, ...], total: int) -> str:
    return f"{len(steps)} of {total} step{'' if total == 1 else 's'} (first at step {steps[0]})"


class NonFiniteActivations(Check):
    code = "LD503"
    title = "non-finite logits or activations during generation"
    artifact = "Generation"
    severity = Severity.ERROR
    rationale = """
    float16 tops out at 65504. LLMs develop a few "massive activation" channels in the residual
    stream that exceed it, so a model that is fine in bfloat16 or float32 overflows to inf in float16;
    the next RMSNorm computes inf/inf = NaN and every logit becomes NaN (QwenLM/Qwen3#761: Qwen2 "fp16
    logits contain many NaN values"). Greedy decoding then emits token id 0 forever (LD502: `!!!!!!`
    with Qwen2), and sampling raises `RuntimeError: probability tensor contains either inf, nan or
    element < 0` (haotian-liu/LLaVA#726, #886). A vision tower or projector with wrong or missing
    weights can produce the same non-finite values. The check hooks every module during greedy
    decoding and names the first one, in execution order, whose output held inf or NaN, the decoding
    step, and the dtype: that module is where to look, not the logits.
    """
    fix = """
    Load and run the model in bfloat16 (or float32) instead of float16 (`--dtype bfloat16`,
    torch_dtype=torch.bfloat16; the Qwen maintainers: "if you could run with bfloat16, please run with
    bfloat16", QwenLM/Qwen3#761); if the first module is in the vision tower or the projector, check
    that their weights were saved and loaded (`llava-doctor audit`, LD201/LD202, delay_load).
    """
    valid = (
        Example("finite everywhere", generation(ANSWER, dtype="bfloat16")),
        Example("float16 that stays finite", generation(ANSWER, dtype="float16")),
    )
    invalid = (
        Example("projector overflows in float16",
                generation((0,) * 12, nonfinite=range(1, 13), module="model.mm_projector.2", module_step=1, value="inf"),
                count=1, contains=("model.mm_projector.2", "inf at step 1", "float16", "logits non-finite at 12 of 12 steps")),
        Example("an MLP overflows at a later step with finite logits",
                generation(ANSWER, module="model.layers.1.mlp.down_proj", module_step=5, value="nan"), count=1,
                contains=("model.layers.1.mlp.down_proj", "nan at step 5", "logits stayed finite")),
        Example("NaN logits with no module recorded", generation((0,) * 5, nonfinite=(4, 5), dtype="bfloat16"),
                count=1, contains=("logits non-finite at 2 of 5 steps (first at step 4) in bfloat16",)),
    )

    def run(self, artifact: Generation, context: Context) -> Iterable[Finding]:
        for sample in artifact.samples:
            bad = sample.nonfinite_steps
            total = len(sample.steps)
            logits = f"logits non-finite at {_steps(bad, total)}" if bad else "logits stayed finite"
            first = sample.first_nonfinite
            if first is not None:
                yield self.finding(
                    f"{sample.label()}: first non-finite output: {first.module} produced {first.value} at step "
                    f"{first.step} in {artifact.dtype}; {logits}; expected finite activations",
                    artifact=artifact.name, location=f"{sample.image}: {first.module}", observed=first.value,
                    expected="finite activations", image=sample.image, prompt=sample.prompt, module=first.module,
                    step=first.step, dtype=artifact.dtype, nonfinite_logit_steps=list(bad))
            elif bad:
                yield self.finding(
                    f"{sample.label()}: {logits} in {artifact.dtype} (no module output was recorded as non-finite); "
                    "expected finite logits",
                    artifact=artifact.name, location=f"{sample.image}: step {bad[0]}", observed="non-finite logits",
                    expected="finite logits", image=sample.image, prompt=sample.prompt, step=bad[0],
                    dtype=artifact.dtype, nonfinite_logit_steps=list(bad))
