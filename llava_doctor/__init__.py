"""llava-doctor: diagnostics for LLaVA-style multimodal training (data, checkpoints, logs, generation)."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["audit", "Finding", "Report", "Severity", "InputError", "__version__"]

from .findings import Finding, InputError, Report, Severity


def audit(*args: Any, **kwargs: Any):
    """Audit checkpoints; see llava_doctor.api.audit."""
    from .api import audit as _audit

    return _audit(*args, **kwargs)
