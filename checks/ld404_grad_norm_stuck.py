"""LD404: the logged grad norm is stuck at 0 or repeats one exact value while the loss is non-zero."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from llava_doctor.artifacts.training_log import LogStep, TrainingLog
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from .ld401_loss_collapse import MIN_RUN

CONSTANT_RUN = 5  # identical non-zero grad norms in a row before it counts (never, in real training)


def _judged(step: LogStep) -> bool:
    """A logged step whose grad norm says something here: finite, non-zero loss (zeros are LD401's,
    non-finite values LD402's) and a finite grad norm."""
    return (step.loss is not None and math.isfinite(step.loss) and step.loss != 0.0
            and step.grad_norm is not None and math.isfinite(step.grad_norm))


def stuck_grad_norm_runs(steps: Sequence[LogStep], min_run: int = MIN_RUN) -> list[list[LogStep]]:
    """Maximal runs of consecutive judged steps with one identical grad norm: 0.0 for >= min_run logs,
    any other value for >= max(CONSTANT_RUN, min_run) logs."""
    runs: list[list[LogStep]] = []
    current: list[LogStep] = []

    def close() -> None:
        needed = max(1, min_run) if current and current[0].grad_norm == 0.0 else max(CONSTANT_RUN, min_run)
        if len(current) >= needed:
            runs.append(list(current))

    for step in steps:
        if _judged(step) and current and step.grad_norm == current[0].grad_norm:
            current.append(step)
            continue
        close()
        current = [step] if _judged(step) else []
    close()
    return runs


def _log(*rows: tuple[float, float | None]):
    def build():
        steps = tuple(LogStep(index=i, step=10 * (i + 1), loss=loss, grad_norm=norm, learning_rate=2e-5)
                      for i, (loss, norm) in enumerate(rows))
        return TrainingLog(name="trainer_state.json", steps=steps, source="trainer_state")

    return build


def _range(values: Iterable[float]) -> str:
    values = list(values)
    low, high = min(values), max(values)
    return f"{low:.4g}" if low == high else f"{low:.4g}..{high:.4g}"


class GradNormStuck(Check):
    code = "LD404"
    title = "grad norm stuck at 0 or constant"
    artifact = "TrainingLog"
    severity = Severity.ERROR
    rationale = """
    The grad norm the HF Trainer logs is the norm BEFORE clipping: `_clip_grad_norm` returns what
    `accelerator.clip_grad_norm_` / `torch.nn.utils.clip_grad_norm_` return (the total norm, then
    the gradients are scaled), and under DeepSpeed `engine.get_global_grad_norm()` is the unclipped
    norm computed in `step()`. So a clipped run does not log `max_grad_norm` over and over; a real
    gradient's norm changes at every step. Two patterns mean the parameters are not learning while
    the loss is a real number. (1) grad_norm 0.0 for several logs beside a positive loss: no
    trainable parameter receives a gradient - everything frozen by the stage flags, or LoRA with
    gradient checkpointing and frozen inputs (`UserWarning: None of the inputs have
    requires_grad=True. Gradients will be None`, LLaVA-VL/LLaVA-NeXT#281; LLaVA's train.py calls
    `enable_input_require_grads()` for this). (2) one exact non-zero value repeated: the logged
    number is not computed from these steps' gradients. DeepSpeed ZeRO-1/2 reported a non-finite
    group norm as -1 and combined it into a finite 1.0, so NaN gradients in bf16 logged
    `grad_norm 1.0` while every step was skipped (hiyouga/LlamaFactory#8004: the loss drops to 0 and
    grad_norm becomes exactly 1 with max_grad_norm 1; deepspeedai/DeepSpeed#5241, #8415). Zero runs
    count after `min_run` logs (default 3), constant ones after 5; logged losses of 0.0 are LD401's
    and non-finite values LD402's. transformers 4.37 (LLaVA's pin) logs no grad norm at all; this
    check then has nothing to read.
    """
    fix = """
    For 0.0: check what requires grad (llava_doctor.inspect / LD301), call
    `model.enable_input_require_grads()` with gradient checkpointing and LoRA, and make sure the
    trainable parameters are in the optimizer (LD303). For a constant value: look for NaN
    gradients (train in bf16 with `check_grad_overflow`, lower the learning rate, LD402) and for a
    logging path that reports a stale norm.
    """
    valid = (
        Example("healthy, varying grad norm", _log((2.3, 4.1), (1.9, 2.2), (1.4, 1.1), (1.2, 0.9), (1.1, 0.8), (1.0, 0.8))),
        Example("two zero norms are below the run length", _log((2.3, 1.0), (2.1, 0.0), (2.0, 0.0), (1.9, 1.2))),
        Example("zero loss with zero norm is LD401's", _log((0.0, 0.0), (0.0, 0.0), (0.0, 0.0))),
        Example("four equal norms are below the constant run", _log((2.0, 1.0), (1.9, 1.0), (1.8, 1.0), (1.7, 1.0))),
        Example("no grad norm logged (transformers 4.37)", _log((2.0, None), (1.9, None), (1.8, None), (1.7, None))),
    )
    invalid = (
        Example("grad norm 0.0 beside a positive loss", _log((2.31, 0.0), (2.31, 0.0), (2.30, 0.0)), count=1,
                contains=("grad_norm is 0.0 for 3 logged steps from step 10 while the loss is 2.3..2.31",
                          "no trainable parameter receives a gradient")),
        Example("LlamaFactory#8004: grad norm exactly 1.0", _log((2.0, 1.3), *[(1.9 - i / 10, 1.0) for i in range(6)]),
                count=1, contains=("grad_norm is exactly 1 for 6 logged steps from step 20", "DeepSpeed")),
        Example("constant 0.2813 (LLaVA-NeXT#281's repeated value)", _log(*[(1.5 + i / 100, 0.2813) for i in range(5)]),
                count=1, contains=("grad_norm is exactly 0.2813 for 5 logged steps",)),
    )

    def run(self, artifact: TrainingLog, context: Context) -> Iterable[Finding]:
        min_run = int(context.option("min_run", MIN_RUN) or MIN_RUN)
        for run in stuck_grad_norm_runs(artifact.steps, min_run):
            first, value = run[0], run[0].grad_norm
            losses = _range(s.loss for s in run)
            if value == 0.0:
                message = (f"grad_norm is 0.0 for {len(run)} logged steps from {first.where} while the loss is {losses}: "
                           "no trainable parameter receives a gradient; expected a positive grad_norm")
            else:
                why = ("DeepSpeed ZeRO-1/2 logs 1.0 when the gradient is NaN/Inf (its -1 sentinel) and skips the step"
                       if value == 1.0 else "the logged norm is not computed from these steps' gradients")
                message = (f"grad_norm is exactly {value:.6g} for {len(run)} logged steps from {first.where} while the "
                           f"loss is {losses}: {why}; expected a grad_norm that varies from step to step")
            yield self.finding(message, artifact=artifact.name, location=first.where, observed=value,
                               expected="a varying, positive grad_norm", first_step=first.step, last_step=run[-1].step,
                               line=first.line, logged_steps=len(run))
