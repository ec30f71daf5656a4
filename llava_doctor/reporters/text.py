"""Text for people: findings grouped by artifact, worst first; each fix once per code (a 665k-sample
data audit prints one fix paragraph, not 665k); unreadable inputs; one summary line at the end.
Colour on a TTY only."""
from __future__ import annotations

import textwrap
from itertools import groupby

from ..findings import Severity
from . import Reporter

_COLOURS = {Severity.ERROR: "\033[31m", Severity.WARNING: "\033[33m", Severity.INFO: "\033[36m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"
WIDTH = 100


def _painter(color: bool):
    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    return paint


def summary_line(report) -> str:
    s = report.summary()
    sev = s["by_severity"]
    line = (f"{s['findings']} finding(s) in {s['artifacts']} artifact(s): "
            f"{sev['error']} error(s), {sev['warning']} warning(s), {sev['info']} info")
    if report.input_errors:
        line += f"; {len(report.input_errors)} input(s) could not be read"
    return line


def input_error_lines(report, paint) -> list[str]:
    return [f"{paint('cannot read', _COLOURS[Severity.ERROR])} {line}" for line in report.input_error_lines()]


def comparison_lines(report) -> list[str]:
    """What each `--base` comparison covered, per component: silence must not look like "nothing changed"."""
    lines = []
    for entry in report.stats.get("comparisons", ()):
        parts = []
        for component, cov in sorted(entry.get("components", {}).items()):
            parts.append(f"{component} {cov.get('compared', 0)} of {cov.get('tensors', 0)} tensors compared "
                         f"({cov.get('changed', 0)} changed)")
        lines.append(f"{entry.get('artifact')}: against {entry.get('base')}: {', '.join(parts) or 'nothing paired'}")
    return lines


def fix_paragraphs(findings) -> list[str]:
    """`LD201  <fix>` once per distinct (code, fix), by code; a custom per-finding fix gets its own paragraph."""
    seen: dict[tuple[str, str], None] = {}
    for f in findings:
        if f.fix:
            seen.setdefault((f.code, f.fix), None)
    lines = []
    for code, fix in sorted(seen, key=lambda pair: pair[0]):
        lines.append(textwrap.fill(fix, width=WIDTH, initial_indent=f"  {code}  ", subsequent_indent=" " * (len(code) + 4),
                                   break_long_words=False, break_on_hyphens=False))
    return lines


class TextReporter(Reporter):
    name = "text"

    def render(self, report, *, color=False, rules=None) -> str:
        paint = _painter(color)
        lines: list[str] = []
        for artifact, group in groupby(report.findings, key=lambda f: f.artifact):
            lines.append(paint(artifact, _BOLD))
            when = None
            for f in group:
                if f.extra.get("when") and f.extra["when"] != when:  # preflight: when each problem would bite
                    when = f.extra["when"]
                    lines.append(f"  {paint(when, _DIM)}")
                where = f" [{f.location}]" if f.location else ""
                severity = _COLOURS[f.severity]
                lines.append(f"  {paint(f.code, severity)} {paint(str(f.severity), severity)}: {f.message}{where}")
            lines.append("")
        with_findings = {f.artifact for f in report.findings}
        unreadable = {artifact for artifact, _ in report.input_errors}
        for artifact in report.artifacts:
            if artifact not in with_findings and artifact not in unreadable:
                lines.append(f"{paint(artifact, _BOLD)}: no findings")
        lines.extend(comparison_lines(report))
        lines.extend(input_error_lines(report, paint))
        fixes = fix_paragraphs(report.findings)
        if fixes:
            if lines and lines[-1]:
                lines.append("")
            lines.append(paint("how to fix (`llava-doctor explain CODE` says why):", _BOLD))
            lines.extend(paint(line, _DIM) for line in fixes)
            lines.append("")
        lines.append(summary_line(report))
        return "\n".join(lines)


def render_statistics_text(report, *, rules=None) -> str:
    """`--statistics`: findings counted per code, most frequent first (ruff's --statistics), then the summary."""
    rules = rules or {}
    rows = report.statistics()
    width = max((len(str(r["count"])) for r in rows), default=1)
    lines = [(f"{r['count']:>{width}}  {r['code']}  {str(r['severity']):7}  {getattr(rules.get(r['code']), 'title', '')}"
              + (f" ({r['occurrences']} occurrences)" if r["occurrences"] != r["count"] else "")).rstrip()
             for r in rows]
    lines.extend(input_error_lines(report, _painter(False)))
    lines.append(summary_line(report))
    return "\n".join(lines)
