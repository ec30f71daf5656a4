"""The Python API: the same power as the CLI, returning a Report.

    >>> report = llava_doctor.audit(["out/checkpoint"], stage="pretrain")
    >>> [f.code for f in report.findings]
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from .findings import Finding, Report, Severity
from .registry import Context, run_checks


def apply_severity_overrides(findings: Iterable[Finding], overrides: Mapping[str, Severity] | None) -> list[Finding]:
    if not overrides:
        return list(findings)
    return [replace(f, severity=overrides[f.code]) if f.code in overrides else f for f in findings]


def audit(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    deep: bool = False,
    stage: str | None = None,
    base: str | os.PathLike | None = None,
    schema: bool = True,
    progress: bool = False,
    severity: Mapping[str, Severity] | None = None,
) -> Report:
    """Audit one or more checkpoints (files or directories). Raises InputError for unreadable input."""
    from .artifacts.readers import open_checkpoint

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    select, ignore = tuple(select), tuple(ignore)
    base_checkpoint = open_checkpoint(base) if base is not None else None
    context = Context(deep=deep, stage=stage, base=base_checkpoint, options={"schema": schema, "progress": progress})
    report = Report()
    for path in paths:
        checkpoint = open_checkpoint(path)
        report.add_artifact(checkpoint.name)
        findings = run_checks(checkpoint, "Checkpoint", context, select=select, ignore=ignore)
        report.extend(apply_severity_overrides(findings, severity))
        report.stats.setdefault("checkpoints", []).append(
            {
                "artifact": checkpoint.name,
                "format": checkpoint.format,
                "layout": checkpoint.layout,
                "tensors": len(checkpoint.tensors),
                "components": {c: len(ts) for c, ts in checkpoint.by_component().items() if ts},
            }
        )
    return report
