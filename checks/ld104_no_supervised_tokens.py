"""LD104: a sample with no supervised token left (empty answer, truncation)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
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


def _label_log(samples: int, unsupervised: int):
    def build():
        from llava_doctor.artifacts.training_log import LabelWindow, TrainingLog

        window = LabelWindow(first_step=7, last_step=7, batches=2, samples=samples, supervised_tokens=300,
                             unsupervised_samples=unsupervised, first_unsupervised_sample_step=7 if unsupervised else None,
                             sample_positions=((1, 3),) if unsupervised else ())
        return TrainingLog(name="live", labels=(window,), labels_checked=True, source="live", complete=False)

    return build


class NoSupervisedTokens(Check):
    code = "LD104"
    title = "sample with no supervised tokens (empty answer, truncation)"
    artifact = ("Dataset", "TrainingLog")
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
    valid = (Example("short answers", _clean), Example("every sample in the step supervised", _label_log(16, 0)))
    invalid = (
        Example("empty answer", _empty_answer, count=1, contains=("sample s1", "empty answer")),
        Example("answer truncated away", _truncated, count=1, contains=("sample long", "model_max_length 600")),
        Example("live: a sample without supervised token", _label_log(16, 1), count=1,
                contains=("1 of 16 samples at step 7 has no supervised token", "(micro-batch 1: position 3)")),
    )

    def run_training_log(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.artifacts.training_log import label_span

        bad = [w for w in artifact.labels if w.unsupervised_samples]
        if bad:
            count, total = sum(w.unsupervised_samples for w in bad), sum(w.samples for w in artifact.labels)
            first = bad[0].first_unsupervised_sample_step or bad[0].last_step
            positions = bad[0].positions
            yield self.finding(
                f"{count} of {total} samples {label_span(artifact.labels)} {'has' if count == 1 else 'have'} no supervised "
                f"token (every label -100), first at step {first}{f' ({positions})' if positions else ''}; expected "
                "every sample to supervise at least one token",
                artifact=artifact.name, location=bad[0].where, severity=Severity.WARNING, observed=count, expected=0,
                first_step=first)

    def run_dataset(self, artifact, context: Context) -> Iterable[Finding]:
        limit = artifact.tokenizer.model_max_length
        for a in artifact.analyses():
            r, sid = a.result, a.sample.id
            if r.crash:
                continue
            if a.oracle is not None and a.oracle.supervised == 0:
                what = f"data problem: {a.problem}" if a.problem else "empty answer"
                yield self.finding(
                    f"sample {sid}: {what}: no assistant text to learn (0 supervised tokens)",
                    artifact=artifact.name, location=f"sample {sid}", observed=0, sample=sid, index=a.sample.index,
                    cause=what, group=f"{what}: no assistant text to learn",
                )
            elif a.truncated and r.supervised > 0 and a.supervised_after_truncation == 0:
                length = sum(artifact.image_features if t == -200 else 1 for t in r.input_ids)
                yield self.finding(
                    f"sample {sid}: truncation: {length} positions (each image = {artifact.image_features}) exceed "
                    f"model_max_length {limit}; none of the {r.supervised} supervised tokens survives",
                    artifact=artifact.name, location=f"sample {sid}", observed=length, expected=limit, sample=sid,
                    index=a.sample.index, tokenized=length, max_length=limit, cause="truncation",
                    group=f"truncation: the answers lie beyond model_max_length {limit} (images = "
                          f"{artifact.image_features} positions each)",
                )
