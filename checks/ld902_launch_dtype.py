"""LD902: a launch dtype that the LLM family cannot train or run in (fp16 with Qwen2; fp16 and bf16 together)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.launch import Launch
from llava_doctor.findings import Finding, Severity
from llava_doctor.preflight.models import fp16_overflow_family
from llava_doctor.registry import Check, Context, Example

from ._launch_examples import FINETUNE, ONEVISION, QWEN2_7B, QWEN_SPECIALS, SIGLIP_SO400M, launch

NEXT = dict(codebase="llava-next", model=QWEN2_7B, tower=SIGLIP_SO400M, specials=QWEN_SPECIALS)
FP16 = {**ONEVISION, "bf16": False, "fp16": True}


class LaunchDtype(Check):
    code = "LD902"
    title = "launch dtype the LLM family overflows in (fp16 with Qwen2)"
    artifact = "Launch"
    severity = Severity.ERROR
    rationale = """
    float16 tops out at 65504. Qwen2-family LLMs carry a few "massive activation" channels in their
    residual stream that exceed it: in float16 the next RMSNorm computes inf/inf = NaN and every logit
    becomes NaN (QwenLM/Qwen3#761: "float16 precision ... outputs are all exclamation marks, other
    precisions are fine ... fp16 logits contain many NaN values"). With `--fp16 True` the training loss
    goes NaN - the HF Trainer's `logging_nan_inf_filter` then logs 0.0, DeepSpeed's loss scaler keeps
    skipping steps - and a model trained or served in float16 answers `!!!!!!` (Qwen2's token id 0 is
    `!`; LLaVA-VL/LLaVA-NeXT#285 pretrained a Qwen2 + SigLIP projector with `--fp16 True` and got
    `!!!!`); with sampling, `probability tensor contains either inf, nan or element < 0`. The maintainers'
    answer is bfloat16. LLaVA-NeXT builds LlavaQwenForCausalLM for any `--model_name_or_path` containing
    "qwen", so the family is known from the name even before the folder is found. Separately,
    `--fp16` together with `--bf16` stops TrainingArguments at launch: `ValueError: At most one of fp16
    and bf16 can be True, but not both`.
    """
    fix = """
    Train (and serve) Qwen2-family models in bfloat16: `--bf16 True` instead of `--fp16 True` (with
    DeepSpeed keep `"bf16": {"enabled": "auto"}`); on GPUs without bfloat16 use float32 or a different
    LLM. Set only one of --fp16 / --bf16.
    """
    valid = (
        Example("OneVision in bf16", launch(ONEVISION, **NEXT)),
        Example("a Llama LLM in fp16", launch({**FINETUNE, "bf16": False, "fp16": True})),
    )
    invalid = (
        Example("Qwen2 with --fp16", launch(FP16, **NEXT), count=1,
                contains=("--fp16", "Qwen2", "model_type 'qwen2'", "!!!!")),
        Example("Qwen2 by LLaVA-NeXT's name dispatch, folder not found", launch(FP16, **{**NEXT, "model": None}),
                count=1, contains=("LlavaQwenForCausalLM",)),
        Example("fp16 and bf16 together", launch({**FINETUNE, "fp16": True}), count=1,
                contains=("At most one of fp16 and bf16",)),
    )

    def run_launch(self, artifact: Launch, context: Context) -> Iterable[Finding]:
        fp16, bf16 = bool(artifact.arg("fp16", False)), bool(artifact.arg("bf16", False))
        if fp16 and bf16:
            yield self.finding(
                "--fp16 and --bf16 are both set: TrainingArguments raises `ValueError: At most one of fp16 and bf16 "
                "can be True, but not both`; expected one of them", artifact=artifact.name,
                location=artifact.where("fp16"), observed="fp16 and bf16", expected="one dtype", phase="launch")
            return
        if not fp16:
            return
        model = artifact.model
        value = str(artifact.arg("model_name_or_path", ""))
        family = fp16_overflow_family(model.config if model else None, value, artifact.codebase)
        if family is None:
            return
        name, how = family
        yield self.finding(
            f"--fp16 with {name} --model_name_or_path {value} ({how}): its activations overflow float16, so the loss "
            "turns NaN during training (logged as 0.0) and a float16 model answers `!!!!` (token 0) at inference; "
            "expected --bf16 True", artifact=artifact.name, location=artifact.where("fp16"), observed="float16",
            expected="bfloat16", phase="epoch", family=name)
