"""LD502: greedy decoding emitted a run of token id 0 because the logits were NaN (argmax of NaN is 0)."""
from __future__ import annotations

from typing import Iterable, Sequence

from llava_doctor.artifacts.generation import Generation
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._generation_examples import ANSWER, generation, sample as example_sample

MIN_RUN = 4


def nan_token_zero_runs(token_ids: Sequence[int], logits_finite: Sequence[bool],
                        min_run: int = MIN_RUN) -> list[tuple[int, int]]:
    """(first step, length) of each maximal run of id 0 generated from non-finite logits that is at least
    `min_run` long or spans every generated token. Steps are 1-based; a step without a recorded
    finiteness counts as finite (no claim without evidence)."""
    runs: list[tuple[int, int]] = []
    start = length = 0
    for step, token in enumerate(token_ids, start=1):
        from_nan = token == 0 and step <= len(logits_finite) and not logits_finite[step - 1]
        if from_nan:
            start, length = (start, length + 1) if length else (step, 1)
            continue
        if length:
            runs.append((start, length))
        length = 0
    if length:
        runs.append((start, length))
    return [(s, n) for s, n in runs if n >= min_run or n == len(token_ids)]


class TokenZeroRun(Check):
    code = "LD502"
    title = "output is a run of token id 0 produced from NaN logits"
    artifact = "Generation"
    severity = Severity.ERROR
    rationale = """
    When the logits of a decoding step are all NaN, greedy decoding's argmax returns index 0, and
    every following step sees the same poisoned activations, so the answer is token 0 over and
    over. In Qwen2's vocabulary id 0 is "!", which is why LLaVA-NeXT / LLaVA-OneVision users report
    answers like `['!!!!!!!!!!!']` (LLaVA-VL/LLaVA-NeXT#155, #285; QwenLM/Qwen3#761 "outputs are all
    exclamation marks, other precisions are fine ... fp16 logits contain many NaN values";
    vllm-project/vllm#22518). With sampling instead of greedy decoding the same NaN logits raise
    `RuntimeError: probability tensor contains either inf, nan or element < 0`
    (haotian-liu/LLaVA#726, #886). Reported when id 0 comes from non-finite logits at least 4 steps
    in a row, or for every generated token; a model that genuinely predicts id 0 from finite logits
    is not this failure. LD503 names the module where the values first became non-finite.
    """
    fix = """
    Run the model in bfloat16 (or float32) instead of float16: fp16 activations overflow past 65504 in
    LLMs with massive activations (QwenLM/Qwen3#761). Then see LD503 for the first module that produced
    inf/NaN (a vision tower or projector loaded wrongly gives the same symptom).
    """
    valid = (
        Example("finite logits, varied tokens", generation(ANSWER, dtype="bfloat16")),
        Example("id 0 from finite logits is the model's own choice", generation((0, 0, 0, 0, 0, 0), dtype="float32")),
        Example("three NaN steps then recovery is shorter than the run", generation((0, 0, 0, 42, 178, 2), nonfinite=(1, 2, 3))),
        Example("non-finite logits without id 0 are LD503's", generation((7, 7, 7, 7, 7), nonfinite=(1, 2, 3, 4, 5))),
        Example("no generated tokens", generation(())),
    )
    invalid = (
        Example("all twelve tokens id 0 from NaN logits (Qwen2 '!')",
                generation((0,) * 12, nonfinite=range(1, 13), text="!!!!!!!!!!!!"), count=1,
                contains=("12 times in a row from step 1 (all 12 generated tokens)", "'!'", "float16",
                          "expected finite logits, varied tokens")),
        Example("a run of id 0 after some words",
                generation((42, 178, 0, 0, 0, 0, 0, 0), nonfinite=(3, 4, 5, 6, 7, 8)), count=1,
                contains=("6 times in a row from step 3 (of 8 generated tokens)",)),
        Example("a short answer that is id 0 throughout", generation((0, 0), nonfinite=(1, 2), token_zero="<unk>"),
                count=1, contains=("2 times in a row from step 1 (all 2 generated tokens)", "'<unk>'")),
        Example("two separate runs", generation((0,) * 4 + (9,) + (0,) * 5, nonfinite=range(1, 11)), count=2,
                contains=("4 times in a row from step 1", "5 times in a row from step 6")),
        Example("one of two images", generation(samples=(example_sample(ANSWER), example_sample((0,) * 6, nonfinite=range(1, 7),
                                                                                image="cat.jpg"))),
                count=1, contains=("cat.jpg / 'Describe the image.': generated token id 0",)),
    )

    def run(self, artifact: Generation, context: Context) -> Iterable[Finding]:
        min_run = int(context.option("min_run", MIN_RUN) or MIN_RUN)
        for sample in artifact.samples:
            total = len(sample.token_ids)
            finite = [step.finite for step in sample.steps]
            for start, length in nan_token_zero_runs(sample.token_ids, finite, min_run):
                scope = f"all {total} generated tokens" if length == total else f"of {total} generated tokens"
                yield self.finding(
                    f"{sample.label()}: generated token id 0 ({artifact.token_zero!r}) {length} times in a row from "
                    f"step {start} ({scope}) while the logits were non-finite in {artifact.dtype}: argmax of a NaN row "
                    "is id 0; expected finite logits, varied tokens",
                    artifact=artifact.name, location=f"{sample.image}: step {start}", observed={"token_id": 0, "run": length},
                    expected="finite logits, varied tokens", image=sample.image, prompt=sample.prompt, first_step=start,
                    run_length=length, token_zero=artifact.token_zero, dtype=artifact.dtype)
