"""`--format github`: GitHub Actions workflow commands (annotations); an unreadable input is an `::error`."""
from __future__ import annotations

from ..findings import Severity
from . import Reporter

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


class GithubReporter(Reporter):
    name = "github"

    def render(self, report, *, color=False, rules=None) -> str:
        lines = []
        for f in report.findings:
            title = f"{f.code} {f.location}".strip()
            lines.append(
                f"::{_COMMAND[f.severity]} file={_escape_property(f.artifact)},title={_escape_property(title)}::"
                f"{_escape_data(f.message + (' Fix: ' + f.fix if f.fix else ''))}"
            )
        for artifact, message in report.input_errors:
            lines.append(f"::error file={_escape_property(artifact)},title=unreadable input::{_escape_data(message)}")
        return "\n".join(lines)
