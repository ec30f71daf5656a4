"""llava-doctor: diagnostics for LLaVA-style multimodal training (data, checkpoints, live models, logs, generation).

The entry points are imported when first used, so that ``import llava_doctor`` stays cheap (no torch):

    llava_doctor.audit(paths, ...)                  saved checkpoints             (llava_doctor.api.audit)
    llava_doctor.inspect(model, ...)                a live model, on any device   (llava_doctor.api.inspect)
    llava_doctor.check_generation(model, ...)       a greedy smoke test           (llava_doctor.api.check_generation)
    llava_doctor.check_logs(paths, ...)             training logs                 (llava_doctor.api.check_logs)
    llava_doctor.preflight(launch, ...)             a launch command, before it runs (llava_doctor.api.preflight)
    llava_doctor.LlavaDoctorCallback(...)           the training-time hook        (llava_doctor.callback)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .findings import Finding, InputError, Report, Severity

_LAZY = {
    "audit": "api",
    "inspect": "api",
    "check_generation": "api",
    "check_logs": "api",
    "preflight": "api",
    "LlavaDoctorCallback": "callback",
    "LlavaDoctorError": "callback",
}
__all__ = [*_LAZY, "Finding", "Report", "Severity", "InputError", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llava_doctor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
