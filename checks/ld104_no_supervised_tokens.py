"""LD104: a sample with no supervised token left (empty answer, truncation)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding
from llava_doctor.registry import Check, Context, Example


def _clean():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat .", "black and white .")], "v1", max_length=2048, image_features=8)


def _empty_answer():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", ""), record("s2", "yes .")], "v1")


def _truncated():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("long", "a cat . " * 30)], "v1", max_length=600)


class NoSupervisedTokens(Check):
    code = "LD104"
    title = "sample with no supervised tokens (empty answer, truncation)"
    artifact = "Dataset"
    rationale = """
    A sample whose labels are all -100 contributes nothing; CrossEntropyLoss(reduction='mean')
    over a batch of such samples is nan (pytorch/pytorch#116349), logged by the HF Trainer as
    0.0. Two causes are not tokenization mismatches: an empty assistant answer, and truncation at
    model_max_length: LLaVA cuts the sequence after inserting the image features (576 positions
    per image for CLIP-336) and skips its mismatch check once cur_len reaches the limit, so a long
    prompt silently leaves no answer token (LLaVA-VL/LLaVA-NeXT#281).
    """
    fix = (
        "Drop or fix samples with empty answers; raise --model_max_length or shorten the prompt so that the "
        "answer fits after the image features."
    )
    valid = (Example("short answers", _clean),)
    invalid = (
        Example("empty answer", _empty_answer, count=1, contains=("sample s1", "empty answer")),
        Example("answer truncated away", _truncated, count=1, contains=("sample long", "model_max_length 600")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        limit = artifact.tokenizer.model_max_length
        for a in artifact.analyses():
            r, sid = a.result, a.sample.id
            if r.crash:
                continue
            if a.oracle is not None and a.oracle.supervised == 0:
                yield self.finding(
                    f"sample {sid}: empty answer: no assistant text to learn (0 supervised tokens)",
                    artifact=artifact.name, location=f"sample {sid}", observed=0, sample=sid, cause="empty answer",
                )
            elif a.truncated and r.supervised > 0 and a.supervised_after_truncation == 0:
                length = sum(artifact.image_features if t == -200 else 1 for t in r.input_ids)
                yield self.finding(
                    f"sample {sid}: truncation: {length} positions (each image = {artifact.image_features}) exceed "
                    f"model_max_length {limit}; none of the {r.supervised} supervised tokens survives",
                    artifact=artifact.name, location=f"sample {sid}", observed=length, expected=limit, sample=sid,
                    tokenized=length, max_length=limit, cause="truncation",
                )
