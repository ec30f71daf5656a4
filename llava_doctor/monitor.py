"""LossMonitor: the TrainingLog checks run live, on the logged step where the failure happens.

    trainer = Trainer(..., callbacks=[LossMonitor()])      # HF Trainer: raises inside on_log
    monitor = LossMonitor(on_problem="warn"); monitor.observe(step, loss, grad_norm)   # any loop

Like Composer's NaNMonitor it raises (or warns) at once; it never imports transformers: every
TrainerCallback event other than on_log is a no-op.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

from .artifacts.training_log import LogStep, TrainingLog, to_float
from .findings import Finding
from .registry import Context, run_checks


class LossMonitorError(RuntimeError):
    def __init__(self, finding: Finding):
        super().__init__(f"{finding.code} {finding.message}")
        self.finding = finding


class LossMonitor:
    def __init__(self, *, min_run: int = 3, on_problem: str = "raise", select: Iterable[str] = ("LD401", "LD402")):
        if on_problem not in ("raise", "warn"):
            raise ValueError(f"on_problem must be 'raise' or 'warn', not {on_problem!r}")
        self.min_run, self.on_problem, self.select = max(1, int(min_run)), on_problem, tuple(select)
        self.steps: list[LogStep] = []
        self.findings: list[Finding] = []  # each code is reported once, at the step it first fires

    @property
    def log(self) -> TrainingLog:
        return TrainingLog(name="live", steps=tuple(self.steps), source="live", complete=False)

    def observe(self, step: int, loss: Any, grad_norm: Any = None, learning_rate: Any = None,
                epoch: Any = None) -> list[Finding]:
        self.steps.append(LogStep(index=len(self.steps), step=int(step), loss=to_float(loss),
                                  grad_norm=to_float(grad_norm), learning_rate=to_float(learning_rate),
                                  epoch=to_float(epoch)))
        # the last min_run + 1 logs are enough to see a run of min_run ending now and what came before it
        window = TrainingLog(name="live", steps=tuple(self.steps[-(self.min_run + 1):]), source="live", complete=False)
        new: list[Finding] = []
        for finding in run_checks(window, "TrainingLog", Context(options={"min_run": self.min_run}), select=self.select):
            if finding.code not in {f.code for f in (*self.findings, *new)}:
                new.append(finding)
        self.findings.extend(new)
        for finding in new:
            if self.on_problem == "raise":
                raise LossMonitorError(finding)
            warnings.warn(f"llava-doctor {finding.code}: {finding.message}", RuntimeWarning, stacklevel=2)
        return new

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.observe(state.global_step, logs["loss"], logs.get("grad_norm"), logs.get("learning_rate"),
                         logs.get("epoch"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return _ignore_event
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")


def _ignore_event(*args: Any, **kwargs: Any) -> None:
    return None
