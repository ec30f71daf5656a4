"""LD402: a NaN the log hides (loss 0.0 next to a NaN grad norm) or shows (NaN/Inf loss or grad norm)."""
from __future__ import annotations

from typing import Iterable, Sequence

from llava_doctor.artifacts.training_log import EvalStep, LogStep, TrainingLog, is_nonfinite
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from .ld401_loss_collapse import MIN_RUN

NAN, INF = float("nan"), float("inf")


def hidden_nan_steps(steps: Sequence[LogStep]) -> list[LogStep]:
    """Logged loss 0.0 beside a NaN/Inf grad_norm: a window of NaN step losses after the Trainer's filter."""
    return [s for s in steps if s.loss == 0.0 and is_nonfinite(s.grad_norm)]


def nonfinite_loss_steps(steps: Sequence[LogStep]) -> list[LogStep]:
    return [s for s in steps if is_nonfinite(s.loss)]


def unrecovered_grad_norm_runs(steps: Sequence[LogStep], min_run: int = MIN_RUN, *,
                               complete: bool = True) -> list[list[LogStep]]:
    """Runs of non-finite grad_norm under a finite non-zero loss that last >= min_run logs or, in a
    complete log, reach its end.

    Shorter runs that recover are what fp16 dynamic loss scaling does at the start (the step is skipped)."""
    runs: list[list[LogStep]] = []
    current: list[LogStep] = []
    for step in steps:
        if is_nonfinite(step.grad_norm) and step.loss != 0.0 and not is_nonfinite(step.loss):
            current.append(step)
            continue
        if len(current) >= max(1, min_run):
            runs.append(current)
        current = []
    if current and (complete or len(current) >= max(1, min_run)):  # never recovered
        runs.append(current)
    return runs


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def _values(values: Iterable[float | None]) -> str:
    return "/".join(sorted({_fmt(v) for v in values}))


def _log(*rows: tuple[float | None, float | None], evals: Sequence[float] = (), train_loss: float | None = 1.0,
         complete: bool = True):
    def build():
        steps = tuple(LogStep(index=i, step=10 * (i + 1), loss=loss, grad_norm=norm, learning_rate=2e-5)
                      for i, (loss, norm) in enumerate(rows))
        eval_steps = tuple(EvalStep(index=i, step=50 * (i + 1), loss=v) for i, v in enumerate(evals))
        summary = {} if train_loss is None else {"train_loss": train_loss}
        return TrainingLog(name="trainer_state.json", steps=steps, evals=eval_steps, summary=summary,
                           source="trainer_state" if complete else "live", complete=complete)

    return build


class HiddenNaN(Check):
    code = "LD402"
    title = "hidden NaN: logged loss 0.0 with NaN grad norm, or NaN/Inf loss"
    artifact = "TrainingLog"
    severity = Severity.ERROR
    rationale = """
    The HF Trainer's `logging_nan_inf_filter` (on by default) replaces a NaN or Inf step loss by the
    running mean of the current logging window (`tr_loss += tr_loss / (1 + global_step -
    _globalstep_last_logged)`), and the window sum is reset to 0 at every log, so a window in which
    every step loss is NaN is logged as `'loss': 0.0`. The grad norm is not filtered: public
    trainer_state.json files show `"loss": 0.0, "grad_norm": NaN` and then `"eval_loss": NaN`. The
    run looks like a collapse to 0 (LD401) but the weights are being destroyed, or the optimizer is
    skipping every step. The usual causes are fp16 overflow (activations beyond 65504), a batch with
    no supervised token (mean cross-entropy over zero targets is NaN), or a learning rate that
    diverged. A NaN/Inf loss or eval_loss logged directly, a final `train_loss` of NaN, or a grad
    norm that stays NaN/Inf for `min_run` logs (default 3) or until the end is the same failure
    in plain sight; a few non-finite grad norms that recover are fp16 loss scaling skipping steps and
    are not reported.
    """
    fix = """
    Train in bf16 instead of fp16 (fp16 overflows in LLMs); check for batches whose labels are all
    -100 (`llava-doctor data`, LD104); lower the learning rate or enable gradient clipping; set
    `logging_nan_inf_filter=False` in TrainingArguments to see the NaN at the step it happens.
    """
    valid = (
        Example("healthy log", _log((2.3, 4.1), (1.9, 2.2), (1.4, 1.1), evals=(1.6,))),
        Example("fp16 loss-scale overflow at the start recovers", _log((2.3, INF), (2.2, NAN), (2.0, 1.3), (1.8, 0.9))),
        Example("live window: one overflow at the current step may still recover",
                _log((2.3, 1.2), (2.2, INF), train_loss=None, complete=False)),
        Example("loss 0.0 with grad_norm 0.0 is LD401's", _log((0.0, 0.0), (0.0, 0.0), (0.0, 0.0))),
        Example("no grad_norm logged", _log((2.3, None), (1.9, None))),
    )
    invalid = (
        Example("loss 0.0 beside grad_norm NaN", _log((2.1, 3.0), (0.0, NAN), (0.0, NAN), (0.0, NAN)), count=1,
                contains=("loss 0.0 with grad_norm nan at 3 logged steps from step 20", "logging_nan_inf_filter")),
        Example("NaN loss logged directly", _log((2.1, 3.0), (NAN, NAN), (NAN, NAN)), count=1,
                contains=("loss is nan at 2 logged steps from step 20",)),
        Example("Inf loss", _log((2.1, 3.0), (INF, 1.0)), count=1, contains=("loss is inf at 1 logged step from step 20",)),
        Example("grad_norm NaN until the end", _log((2.1, 3.0), (2.0, 2.5), (1.9, NAN)), count=1,
                contains=("grad_norm is nan for 1 logged step from step 30 and does not recover",)),
        Example("grad_norm Inf for min_run logs", _log((2.1, INF), (2.0, INF), (1.9, INF), (1.9, 1.0)), count=1,
                contains=("grad_norm is inf for 3 logged steps from step 10",)),
        Example("final train_loss NaN behind finite logs", _log((0.0, 0.0), (0.0, 0.0), train_loss=NAN), count=1,
                contains=("final train_loss is nan", "while every logged step loss is finite")),
        Example("eval_loss NaN", _log((2.1, 3.0), (1.9, 2.0), evals=(1.7, NAN)), count=1,
                contains=("eval_loss is nan at 1 evaluation from step 100",)),
    )

    def run(self, artifact: TrainingLog, context: Context) -> Iterable[Finding]:
        min_run = int(context.option("min_run", MIN_RUN) or MIN_RUN)
        hidden = hidden_nan_steps(artifact.steps)
        if hidden:
            yield self._steps(
                artifact, hidden,
                f"loss 0.0 with grad_norm {_values(s.grad_norm for s in hidden)} at {_count(hidden, 'logged step')} "
                f"from {hidden[0].where}: the step losses were NaN/Inf and logging_nan_inf_filter logged 0.0; "
                "expected a finite grad_norm",
                observed={"loss": 0.0, "grad_norm": _fmt(hidden[0].grad_norm)}, expected="finite grad_norm")
        bad_loss = nonfinite_loss_steps(artifact.steps)
        if bad_loss:
            yield self._steps(
                artifact, bad_loss,
                f"loss is {_values(s.loss for s in bad_loss)} at {_count(bad_loss, 'logged step')} from "
                f"{bad_loss[0].where} (grad_norm {_fmt(bad_loss[0].grad_norm)}); expected a finite loss",
                observed=_fmt(bad_loss[0].loss), expected="finite loss")
        for run in unrecovered_grad_norm_runs(artifact.steps, min_run, complete=artifact.complete):
            reaches_end = artifact.complete and run[-1] is artifact.steps[-1]
            yield self._steps(
                artifact, run,
                f"grad_norm is {_values(s.grad_norm for s in run)} for {_count(run, 'logged step')} from "
                f"{run[0].where}{' and does not recover' if reaches_end else ''} (loss {_fmt(run[0].loss)}); "
                "expected a finite grad_norm",
                observed=_fmt(run[0].grad_norm), expected="finite grad_norm")
        train_loss = artifact.summary.get("train_loss")
        if is_nonfinite(train_loss):
            hidden_by_filter = artifact.steps and not any(is_nonfinite(s.loss) for s in artifact.steps)
            why = " while every logged step loss is finite: the filter hid NaN step losses" if hidden_by_filter else ""
            yield self.finding(
                f"final train_loss is {_fmt(train_loss)}{why}; expected a finite train_loss",
                artifact=artifact.name, location="train_loss", observed=_fmt(train_loss), expected="finite train_loss")
        bad_eval = [e for e in artifact.evals if is_nonfinite(e.loss)]
        if bad_eval:
            yield self._steps(
                artifact, bad_eval,
                f"eval_loss is {_values(e.loss for e in bad_eval)} at {_count(bad_eval, 'evaluation')} from "
                f"{bad_eval[0].where}; expected a finite eval_loss",
                observed=_fmt(bad_eval[0].loss), expected="finite eval_loss")

    def _steps(self, artifact: TrainingLog, steps: Sequence[LogStep | EvalStep], message: str, **values) -> Finding:
        return self.finding(message, artifact=artifact.name, location=steps[0].where, first_step=steps[0].step,
                            line=steps[0].line, logged_steps=len(steps), steps=[s.step for s in steps], **values)


def _count(items: Sequence, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
