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


def _check_into(report: Report, artifact, name: str, kind: str, context: Context, *, select: Iterable[str],
                ignore: Iterable[str], severity: Mapping[str, Severity] | None) -> None:
    """Run the checks of `kind` on one artifact and add what they find to `report`."""
    report.add_artifact(name)
    findings = run_checks(artifact, kind, context, select=tuple(select), ignore=tuple(ignore))
    report.extend(apply_severity_overrides(findings, severity))


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
        _check_into(report, checkpoint, checkpoint.name, "Checkpoint", context, select=select, ignore=ignore,
                    severity=severity)
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


def check_logs(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    min_run: int = 3,
    severity: Mapping[str, Severity] | None = None,
) -> Report:
    """Check training logs (trainer_state.json, run dirs, JSONL, text logs). Raises InputError for unreadable input."""
    from .artifacts.training_log import read_training_log

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    context = Context(options={"min_run": min_run})
    report = Report()
    for path in paths:
        log = read_training_log(path)
        _check_into(report, log, log.name, "TrainingLog", context, select=select, ignore=ignore, severity=severity)
        report.stats.setdefault("logs", []).append(
            {"artifact": log.name, "format": log.source, "train_steps": len(log.steps), "evals": len(log.evals),
             "first_step": log.steps[0].step if log.steps else None,
             "last_step": log.steps[-1].step if log.steps else None}
        )
    return report


def check_generation(
    generation,
    *,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    severity: Mapping[str, Severity] | None = None,
) -> Report:
    """Check one Generation (see llava_doctor.artifacts.generation.run_generation for producing it)."""
    report = Report()
    _check_into(report, generation, generation.name, "Generation", Context(), select=select, ignore=ignore,
                severity=severity)
    report.stats["generation"] = {
        "artifact": generation.name, "dtype": generation.dtype, "prompt": generation.prompt,
        "generated_ids": list(generation.token_ids), "generated_text": generation.text,
        "nonfinite_logit_steps": list(generation.nonfinite_steps),
        "first_nonfinite_module": generation.first_nonfinite_module,
        "first_nonfinite_step": generation.first_nonfinite_step,
    }
    return report
