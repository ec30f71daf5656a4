"""Text for people: grouped by artifact, worst first, colour on a TTY only, one summary line at the end."""
from __future__ import annotations

from itertools import groupby

from ..findings import Severity
from . import Reporter

_COLOURS = {Severity.ERROR: "\033[31m", Severity.WARNING: "\033[33m", Severity.INFO: "\033[36m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


class TextReporter(Reporter):
    name = "text"

    def render(self, report, *, color=False, rules=None) -> str:
        def paint(text: str, code: str) -> str:
            return f"{code}{text}{_RESET}" if color else text

        lines: list[str] = []
        for artifact, group in groupby(report.findings, key=lambda f: f.artifact):
            lines.append(paint(artifact, _BOLD))
            for f in group:
                where = f" [{f.location}]" if f.location else ""
                lines.append(f"  {paint(f.code, _COLOURS[f.severity])} {paint(str(f.severity), _COLOURS[f.severity])}: {f.message}{where}")
                if f.fix:
                    lines.append(paint(f"      fix: {f.fix}", _DIM))
            lines.append("")
        clean = [a for a in report.artifacts if a not in {f.artifact for f in report.findings}]
        for artifact in clean:
            lines.append(f"{paint(artifact, _BOLD)}: no findings")
        s = report.summary()
        sev = s["by_severity"]
        lines.append(
            f"{s['findings']} finding(s) in {s['artifacts']} artifact(s): "
            f"{sev['error']} error(s), {sev['warning']} warning(s), {sev['info']} info"
        )
        return "\n".join(lines)
