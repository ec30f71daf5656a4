"""LD403: a (micro-)batch with no supervised token: every label is -100."""
from __future__ import annotations

from typing import Iterable, Sequence

from llava_doctor.artifacts.training_log import LabelWindow, LogStep, TrainingLog, label_span
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def _windows(*rows: tuple[int, int, int, int], every: int = 1, live: bool = False):
    """rows: (batches, unsupervised batches, samples, unsupervised samples) per window of `every` steps."""

    def build():
        windows = []
        for i, (batches, bad_batches, samples, bad_samples) in enumerate(rows):
            last = (i + 1) * every
            windows.append(LabelWindow(
                first_step=last - every + 1, last_step=last, batches=batches, samples=samples,
                supervised_tokens=0 if bad_batches == batches else 40 * (samples - bad_samples),
                unsupervised_batches=bad_batches, unsupervised_samples=bad_samples,
                first_unsupervised_batch_step=last - every + 1 if bad_batches else None,
                first_unsupervised_sample_step=last - every + 1 if bad_samples else None,
            ))
        steps = tuple(LogStep(index=i, step=w.last_step, loss=1.5) for i, w in enumerate(windows))
        return TrainingLog(name="live" if live else "trainer_state.json", steps=steps, labels=tuple(windows),
                           labels_checked=True, source="live" if live else "trainer_state", complete=not live)

    return build


def _no_label_statistics():
    return TrainingLog(name="trainer_state.json", steps=(LogStep(0, 10, 2.1, 1.0),), source="trainer_state")


class UnsupervisedBatch(Check):
    code = "LD403"
    title = "a batch with no supervised token (every label -100)"
    artifact = "TrainingLog"
    severity = Severity.ERROR
    rationale = """
    A micro-batch whose labels are all IGNORE_INDEX (-100) trains on nothing. With the mean
    cross-entropy of transformers' causal-LM loss its loss is 0/0 = NaN and its gradient zero
    (pytorch/pytorch#116349 calls this expected); the HF Trainer's `logging_nan_inf_filter` then
    hides the NaN and the log reads `'loss': 0.0` (LD401/LD402), and optimizers with momentum
    still move the weights on a step that saw no data. It is what LLaVA's preprocess leaves
    when it drops samples on a tokenization mismatch (`WARNING: tokenization mismatch: 102 vs.
    104. (ignored)`, every label of the sample set to -100) and the per-device batch is small,
    what truncation at `model_max_length` leaves when the answer comes after 576 image positions,
    what TRL's completion-only collator leaves when it cannot find its response template ("This
    instance will be ignored in loss calculation"), and what a chat template without
    `{% generation %}` gives as an all-zero assistant mask. The live check counts the supervised
    labels of every micro-batch as the model receives them (after the collator, before the
    forward; position 0 does not count, the causal shift drops it), sums them over gradient
    accumulation and over ranks, and fires at the optimizer step where it happens.
    LlavaDoctorCallback also writes these counts into each `log_history` entry (`labels_*` keys),
    so `llava-doctor logs` checks a saved `trainer_state.json` the same way; a log without them says
    so instead of passing.
    """
    fix = """
    Find the samples: `llava-doctor data DATA.json --tokenizer DIR --template NAME` names the ones
    the training code drops (LD101) or truncates away (LD104). Use the conversation template that
    matches the tokenizer, raise `model_max_length`, and check the collator's response template
    or the chat template's `{% generation %}` markers.
    """
    valid = (
        Example("every batch supervised", _windows((4, 0, 32, 0), (4, 0, 32, 0), every=10)),
        Example("a few unsupervised samples inside supervised batches are LD104's", _windows((4, 0, 32, 3))),
        Example("live step with supervision", _windows((2, 0, 16, 0), live=True)),
    )
    invalid = (
        Example("live: every label -100 at step 1", _windows((1, 1, 8, 8), live=True), count=1,
                contains=("1 of 1 micro-batch at step 1 has no supervised token", "the step trains on nothing")),
        Example("saved log: two windows with masked micro-batches", _windows((4, 0, 32, 0), (4, 1, 32, 8), (4, 4, 32, 32),
                                                                             every=10),
                count=1, contains=("5 of 12 micro-batches in steps 1..30 have no supervised token", "first at step 11",
                                   "no supervised token at all in steps 21..30")),
        Example("log without label statistics: not checked", _no_label_statistics, count=1,
                contains=("not checked",)),
    )

    def run(self, artifact: TrainingLog, context: Context) -> Iterable[Finding]:
        if not artifact.labels_checked:
            if artifact.steps and artifact.source != "live":
                yield self.finding(
                    "no label statistics in this log: batches and samples without a supervised token (LD403, LD104) "
                    "not checked (LlavaDoctorCallback records them as labels_* keys of log_history)",
                    artifact=artifact.name, location="log", severity=Severity.INFO)
            return
        bad = [w for w in artifact.labels if w.unsupervised_batches]
        if not bad:
            return
        yield self.finding(message(artifact.labels, bad), artifact=artifact.name, location=bad[0].where,
                           observed=sum(w.unsupervised_batches for w in bad), expected=0,
                           first_step=_first_step(bad[0]), steps=[w.last_step for w in bad][:20])


def _first_step(window: LabelWindow) -> int | None:
    return window.first_unsupervised_batch_step or window.last_step


def message(windows: Sequence[LabelWindow], bad: Sequence[LabelWindow]) -> str:
    count = sum(w.unsupervised_batches for w in bad)
    total = sum(w.batches for w in windows)
    verb = "has" if count == 1 else "have"
    span = label_span(windows)
    first = _first_step(bad[0])
    text = f"{count} of {_plural(total, 'micro-batch', 'micro-batches')} {span} {verb} no supervised token (every label -100)"
    if len(windows) > 1 and first is not None:
        text += f", first at step {first}"
    empty = [w for w in bad if w.supervised_tokens == 0 and w.batches]
    if len(windows) == 1 and empty:
        text += ": the step trains on nothing and its mean loss is NaN (logged as 0.0)"
    elif empty:
        text += f"; no supervised token at all {label_span(empty[:1])}"
    return text + "; expected at least one supervised token per batch"
