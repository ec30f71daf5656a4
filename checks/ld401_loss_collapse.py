"""LD401: the logged training loss collapsed to exactly 0."""
from __future__ import annotations

from typing import Iterable, Sequence

from llava_doctor.artifacts.training_log import LogStep, TrainingLog, is_nonfinite
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

MIN_RUN = 3  # consecutive logged zeros before it counts (option "min_run")


def zero_loss_runs(steps: Sequence[LogStep], min_run: int = MIN_RUN) -> list[list[LogStep]]:
    """Maximal runs of >= min_run consecutive logged losses == 0.0.

    A zero next to a NaN/Inf grad_norm is a NaN hidden by the Trainer's filter (LD402), so it ends a run.
    """
    runs: list[list[LogStep]] = []
    current: list[LogStep] = []
    for step in (*steps, None):
        if step is not None and step.loss == 0.0 and not is_nonfinite(step.grad_norm):
            current.append(step)
            continue
        if len(current) >= max(1, min_run):
            runs.append(current)
        current = []
    return runs


def mechanism(run: Sequence[LogStep]) -> tuple[str, str]:
    """(what the grad norms were, what that means) for a run of zero losses."""
    norms = [s.grad_norm for s in run if s.grad_norm is not None]
    if not norms:
        return ("no grad_norm logged",
                "every label is masked (all -100), or NaN step losses hidden by logging_nan_inf_filter")
    if all(n == 0.0 for n in norms):
        return "grad_norm 0.0", "every label is masked (all -100), so nothing is learned"
    low, high = min(norms), max(norms)
    shown = f"grad_norm {high:.4g}" if low == high else f"grad_norm {low:.4g}..{high:.4g}"
    return (shown + ", not 0",
            "the logged loss is not the loss being optimised, or it is below the logger's rounding")


def _log(*losses: float | None, grad_norms: Sequence[float | None] | None = None, first_step: int = 1,
         every: int = 1):
    def build():
        norms = grad_norms if grad_norms is not None else [None if l is None else (1.5 if l else 0.0) for l in losses]
        steps = tuple(LogStep(index=i, step=first_step + i * every, loss=l, grad_norm=n, learning_rate=2e-5,
                              epoch=round(0.01 * i, 4))
                      for i, (l, n) in enumerate(zip(losses, norms)))
        return TrainingLog(name="trainer_state.json", steps=steps, source="trainer_state")

    return build


def _min_run(k: int):
    return lambda: Context(options={"min_run": k})


class LossCollapsedToZero(Check):
    code = "LD401"
    title = "loss collapsed to exactly 0"
    artifact = "TrainingLog"
    severity = Severity.ERROR
    rationale = """
    A real language-model loss is never exactly 0.0 for several logging windows in a row; a logged
    0.0 means the loss was computed over nothing. The common cause in LLaVA-style training is that
    every label is IGNORE_INDEX (-100): LLaVA's preprocess masks a whole sample on a tokenization
    mismatch (`WARNING: tokenization mismatch: 102 vs. 104. (ignored)`), a chat template without
    `{% generation %}` gives an all-zero assistant mask, truncation cuts the answer off, or a
    completion-only collator never finds its response template. Torch's mean cross-entropy over zero
    targets is NaN with zero gradients, and the HF Trainer's `logging_nan_inf_filter` (on by default)
    turns a window of NaN step losses into a logged 0.0, so users see
    `{'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': 2.6490066225165566e-08, 'epoch': 0.0}`
    (BAAI-DCAI/Bunny#75), or `loss 1.9166` at step 1 and 0.0 afterwards
    (xiaoachen98/Open-LLaVA-NeXT#12); training runs to the end and the model learns nothing.
    The logged grad_norm tells the mechanisms apart: 0.0 means every label is masked; NaN means a
    hidden NaN (reported by LD402 instead); a positive grad_norm means the logged value is not the
    optimised loss (e.g. LLaVA-VL/LLaVA-NeXT#281, `None of the inputs have requires_grad=True`) or a
    loss below the logger's rounding. A run counts once it lasts `min_run` (default 3) logged steps.
    """
    fix = """
    Find why every label is -100: run `llava-doctor data DATA.json --tokenizer DIR --template NAME`
    (LD101/LD104 name the dropped samples), use the conversation template that matches the
    tokenizer (`--version` in LLaVA), add `{% generation %}` to the chat template when using
    assistant masks, and raise `model_max_length` if answers are truncated. Check that at least one
    label per batch is not -100 before training.
    """
    valid = (
        Example("healthy decreasing loss", _log(2.31, 1.92, 1.40, 1.12, 0.95)),
        Example("two zeros are below the default run length", _log(1.9, 0.0, 0.0, 1.7)),
        Example("zeros with NaN grad_norm are LD402's", _log(1.9, 0.0, 0.0, 0.0, 0.0,
                                                             grad_norms=[1.2, *[float("nan")] * 4])),
        Example("tiny but non-zero loss", _log(1e-4, 5e-5, 2e-5, 1e-5)),
        Example("a shorter run than --min-run", _log(0.0, 0.0, 0.0, 0.0, 1.2), context=_min_run(5)),
    )
    invalid = (
        Example("Bunny#75: 0.0 from the first log with grad_norm 0.0", _log(0.0, 0.0, 0.0, 0.0, first_step=1), count=1,
                contains=("loss is exactly 0.0 for 4 logged steps from step 1", "(grad_norm 0.0)",
                          "every label is masked")),
        Example("Open-LLaVA-NeXT#12: 1.9166 at step 1, then 0.0", _log(1.9166, *[0.0] * 12, every=10), count=1,
                contains=("for 12 logged steps from step 11", "after loss 1.917 at step 1")),
        Example("no grad_norm in the log", _log(0.0, 0.0, 0.0, grad_norms=[None] * 3), count=1,
                contains=("no grad_norm logged",)),
        Example("LLaVA-NeXT#281: loss 0.0 with the same positive grad_norm", _log(0.0, 0.0, 0.0, 0.0,
                                                                                  grad_norms=[0.2813] * 4),
                count=1, contains=("grad_norm 0.2813, not 0", "not the loss being optimised")),
        Example("two separate collapses", _log(0.0, 0.0, 0.0, 1.4, 0.0, 0.0, 0.0), count=2,
                contains=("from step 1", "from step 5")),
        Example("--min-run 2", _log(1.1, 0.0, 0.0, 0.9), context=_min_run(2), count=1,
                contains=("for 2 logged steps from step 2",)),
    )

    def run(self, artifact: TrainingLog, context: Context) -> Iterable[Finding]:
        min_run = int(context.option("min_run", MIN_RUN) or MIN_RUN)
        for run in zero_loss_runs(artifact.steps, min_run):
            first, last = run[0], run[-1]
            earlier = artifact.steps[:artifact.steps.index(first)]
            before = next((s for s in reversed(earlier) if s.loss and not is_nonfinite(s.loss)), None)
            after = f" after loss {before.loss:.4g} at {before.where}" if before is not None else ""
            norms, meaning = mechanism(run)
            yield self.finding(
                f"loss is exactly 0.0 for {len(run)} logged steps from {first.where}{after} ({norms}): "
                f"{meaning}; expected a positive loss",
                artifact=artifact.name,
                location=first.where,
                observed=0.0,
                expected="loss > 0",
                first_step=first.step,
                last_step=last.step,
                line=first.line,
                logged_steps=len(run),
                grad_norms=sorted({s.grad_norm for s in run if s.grad_norm is not None}),
            )
