"""`preflight`: read a launch, run every check that applies, and audit its data - one report, by phase.

The Launch checks (LD301, LD901-LD904) run on the artifact; the tokenization audit (LD101-LD105,
``templates.audit.audit_conversations``) runs on the launch's records with the tokenizer of
``--model_name_or_path``, the template ``--version`` resolves to in that codebase, its recipe and
``--model_max_length``. Every finding carries ``phase`` (when it would bite: launch, step 1, epoch,
save, inference) and ``phase_rank`` (its order), and the report's stats say what was read, what the
run would lose of its data, and what could not be checked.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from ..artifacts.launch import PHASE_LABELS, PHASES, Launch, phase_rank, read_launch
from ..findings import Finding, InputError, Report, Severity
from ..registry import Context, matches, run_checks

AUDIT_CODES = ("LD101", "LD102", "LD103", "LD104", "LD105")


def with_phase(finding: Finding) -> Finding:
    """The finding with `phase` (tokenization-audit findings bite during the epoch) and `phase_rank`."""
    phase = finding.extra.get("phase") or ("epoch" if finding.code in AUDIT_CODES else "launch")
    return replace(finding, extra={**finding.extra, "phase": phase, "phase_rank": phase_rank(phase),
                                   "when": PHASE_LABELS.get(phase, phase)})


def by_phase(findings: Iterable[Finding]) -> list[Finding]:
    """Findings in the order their problems would bite, worst first within a phase."""
    return sorted(findings, key=lambda f: (f.extra.get("phase_rank", len(PHASES)), -int(f.severity), f.code,
                                           f.location, f.message))


def _selected(code: str, select: Sequence[str], ignore: Sequence[str]) -> bool:
    return matches(code, list(select) or ["ALL"]) and not matches(code, list(ignore))


def _audit(launch: Launch, select: Sequence[str], ignore: Sequence[str]) -> tuple[list[Finding], dict[str, Any], str | None]:
    """(LD10x findings, the audit's summary, why it did not run)."""
    from ..templates.audit import audit_conversations
    from ..templates.recipes import resolve_template
    from .tokenizer import load_training_tokenizer

    if not launch.records:
        return [], {}, None
    if not any(_selected(code, select, ignore) for code in AUDIT_CODES):
        return [], {}, "not selected"
    model = launch.model
    if model is None or not model.found or not model.path:
        return [], {}, "the tokenizer of --model_name_or_path is not on this machine"
    try:
        tokenizer, note = load_training_tokenizer(model.path, launch.codebase, model.value, launch.arg("model_max_length"))
    except InputError as exc:
        return [], {}, f"its tokenizer cannot be loaded ({exc})"
    if note:
        launch.notes.append(note)
    template = resolve_template(launch.recipe, str(launch.arg("version", "v0")))[0].name
    audited = audit_conversations(launch.records, tokenizer, template, recipe=launch.recipe,
                                  max_length=launch.arg("model_max_length"), select=tuple(select),
                                  ignore=tuple(ignore), name=str(launch.arg("data_path")))
    return list(audited.findings), dict(audited.stats.get("data", {})), None


def _data_summary(launch: Launch, audit: Mapping[str, Any], findings: list[Finding]) -> dict[str, Any]:
    summary: dict[str, Any] = {"records": launch.data.records if launch.data else 0}
    if audit:
        samples = audit.get("samples") or summary["records"]
        summary.update(samples=samples, dropped=audit.get("dropped", 0), crashed=audit.get("crashed", 0),
                       truncated=audit.get("truncated", 0), drifted=audit.get("drifted", 0))
    images = launch.images
    if images is not None and images.total:
        estimate = round(len(images.missing) / images.checked * images.total) if images.checked else 0
        summary["images"] = {"references": images.total, "checked": images.checked, "missing": len(images.missing),
                             "estimated_missing": estimate, "decoded": images.decoded,
                             "undecodable": len(images.undecodable) + len(images.oversized), "videos_not_checked": images.videos}
    samples = summary.get("samples") or summary["records"]
    if samples:
        lost = summary.get("dropped", 0) + summary.get("crashed", 0) + summary.get("truncated", 0)
        lost += summary.get("images", {}).get("estimated_missing", 0)
        summary["fraction_lost"] = min(1.0, lost / samples)
    return summary


def preflight(source: str | os.PathLike | Sequence[str], *, workdir: str | os.PathLike | None = None,
              codebase: str | None = None, maps: Mapping[str, str] | None = None, stage: str | None = None,
              select: Iterable[str] = ("ALL",), ignore: Iterable[str] = (), severity: Mapping[str, Severity] | None = None,
              launch: int | None = None, max_images: int | None = None, decode_images: int | None = None,
              environ: Mapping[str, str] | None = None) -> Report:
    """Check a training launch before it runs (see the module docstring). Raises InputError for an unreadable launch."""
    started = time.perf_counter()
    artifact = read_launch(source, workdir=workdir, codebase=codebase, maps=maps, environ=environ, launch=launch,
                           max_images=max_images, decode_images=decode_images)
    report = check_launch(artifact, stage=stage, select=select, ignore=ignore, severity=severity)
    report.timings["preflight"]["read"] = round(time.perf_counter() - started - sum(
        report.timings["preflight"].values()), 3)
    return report


def check_launch(artifact: Launch, *, stage: str | None = None, select: Iterable[str] = ("ALL",),
                 ignore: Iterable[str] = (), severity: Mapping[str, Severity] | None = None) -> Report:
    """Run the Launch checks and the tokenization audit on a launch already read (`read_launch`)."""
    from ..api import apply_severity_overrides
    from .policy import launch_policy

    select, ignore = tuple(select) or ("ALL",), tuple(ignore)
    started = time.perf_counter()
    findings = run_checks(artifact, "Launch", Context(stage=stage), select=select, ignore=ignore)
    checked = time.perf_counter()
    audit_findings, audit_summary, audit_skipped = _audit(artifact, select, ignore)
    audited = time.perf_counter()

    report = Report()
    report.add_artifact(artifact.name)
    if artifact.data is not None and artifact.records:
        report.add_artifact(str(artifact.arg("data_path")))
    report.extend(apply_severity_overrides([with_phase(f) for f in findings + audit_findings], severity))
    policy = launch_policy(artifact, stage)
    report.stats["preflight"] = {
        "launch": artifact.name, "launcher": artifact.launcher, "script": artifact.script, "line": artifact.line,
        "codebase": artifact.codebase, "codebase_reason": artifact.codebase_reason, "recipe": artifact.recipe,
        "arguments_from": artifact.parser_source, "transformers": artifact.transformers_version,
        "stage": policy.stage, "stage_reason": policy.stage_reason, "trainable": policy.trainable,
        "references": {flag: {"value": ref.value, "path": ref.path, "how": ref.how}
                       for flag, ref in artifact.references.items()},
        "data": _data_summary(artifact, audit_summary, audit_findings),
        "tokenization_audit": "ran" if audit_summary else f"not run: {audit_skipped}" if audit_skipped else "no records",
        "notes": list(artifact.notes) + list(artifact.data.notes if artifact.data else ()),
        "phases": [PHASE_LABELS[p] for p in PHASES],
        "order": [report.findings.index(f) for f in by_phase(report.findings)],
    }
    report.timings["preflight"] = {"checks": round(checked - started, 3), "tokenization_audit": round(audited - checked, 3)}
    return report
