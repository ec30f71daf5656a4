"""Deprecated: ``LossMonitor`` is now :class:`llava_doctor.LlavaDoctorCallback` (one public training hook).

``LossMonitor(min_run=3, on_problem="raise", select=("LD401", "LD402"))`` still works, with a
DeprecationWarning, and behaves as before: the loss checks on every log, raising (or warning) at
the step the failure happens. It is the callback restricted to LD401/LD402.
"""
from __future__ import annotations

import warnings
from typing import Iterable

from .callback import LlavaDoctorCallback, LlavaDoctorError

LossMonitorError = LlavaDoctorError  # the old name of the exception, for `except LossMonitorError`


class LossMonitor(LlavaDoctorCallback):
    def __init__(self, *, min_run: int = 3, on_problem: str = "raise", select: Iterable[str] = ("LD401", "LD402")):
        warnings.warn("llava_doctor.monitor.LossMonitor is deprecated; use llava_doctor.LlavaDoctorCallback "
                      "(select=('LD401', 'LD402') for the same checks)", DeprecationWarning, stacklevel=2)
        super().__init__(min_run=min_run, on_problem=on_problem, select=select)
