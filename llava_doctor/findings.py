"""Finding and Report: the one currency every check, reader and reporter shares."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @classmethod
    def parse(cls, value: "str | Severity") -> "Severity":
        if isinstance(value, Severity):
            return value
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {value!r} (expected error, warning or info)") from None

    def __str__(self) -> str:
        return self.name.lower()


def explain_command(code: str) -> str:
    """Where a finding's documentation is: the installed tool prints it, for built-in and third-party checks
    alike, on any machine (a path into a checkout or a site-packages folder would not survive a CI job)."""
    return f"llava-doctor explain {code}"


@dataclass(frozen=True)
class Finding:
    """One diagnosis. `message` is a single line naming the key/sample/step with observed vs expected."""

    code: str
    severity: Severity
    message: str
    artifact: str
    location: str = ""
    fix: str = ""
    observed: Any = None
    expected: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "\n" in self.message:
            raise ValueError(f"{self.code}: a finding message must be one line: {self.message!r}")

    @property
    def doc(self) -> str:
        return explain_command(self.code)

    def sort_key(self) -> tuple:
        # `phase_rank` (preflight: when the problem would bite) orders before severity; 0 elsewhere
        return (self.artifact, int(self.extra.get("phase_rank", 0) or 0), -int(self.severity), self.code, self.location,
                self.message)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": str(self.severity),
            "message": self.message,
            "artifact": self.artifact,
            "location": self.location,
            "fix": self.fix,
            "doc": self.doc,
        }
        if self.observed is not None:
            out["observed"] = jsonable(self.observed)
        if self.expected is not None:
            out["expected"] = jsonable(self.expected)
        for key, value in sorted(self.extra.items()):
            out.setdefault(key, jsonable(value))
        return out


def jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/Inf become the strings "nan"/"inf"/"-inf" (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return str(value)


@dataclass
class Report:
    """Findings of one run over one or more artifacts, always kept sorted."""

    findings: list[Finding] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    # inputs that could not be read at all: (what the user passed, one-line reason). The run goes
    # on with the other inputs, and the exit code is 2 (unreadable input) whatever else was found.
    input_errors: list[tuple[str, str]] = field(default_factory=list)
    # wall-clock measurements (seconds): shown to people, never in machine formats, which stay identical run to run
    timings: dict[str, Any] = field(default_factory=dict)

    def add_input_error(self, artifact: str, message: str) -> None:
        if (artifact, message) not in self.input_errors:
            self.input_errors.append((artifact, message))

    def input_error_lines(self) -> list[str]:
        """One line per unreadable input, naming it once (`x.bin: no such file`, not `x.bin: x.bin: ...`)."""
        return [message if message.startswith(artifact) else f"{artifact}: {message}"
                for artifact, message in self.input_errors]

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)
        self.findings.sort(key=Finding.sort_key)

    def add_artifact(self, name: str) -> None:
        if name not in self.artifacts:
            self.artifacts.append(name)

    def merge(self, other: "Report") -> None:
        for name in other.artifacts:
            self.add_artifact(name)
        self.extend(other.findings)
        for artifact, message in other.input_errors:
            self.add_input_error(artifact, message)
        for key, value in other.stats.items():
            self.stats.setdefault(key, value)
        for key, value in other.timings.items():
            self.timings.setdefault(key, value)

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def by_code(self, code: str) -> list[Finding]:
        return [f for f in self.findings if f.code == code]

    def at_or_above(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= severity]

    def summary(self) -> dict[str, Any]:
        counts = {str(s): 0 for s in sorted(Severity, reverse=True)}
        per_code: dict[str, int] = {}
        for f in self.findings:
            counts[str(f.severity)] += 1
            per_code[f.code] = per_code.get(f.code, 0) + 1
        return {
            "artifacts": len(self.artifacts),
            "findings": len(self.findings),
            "by_severity": counts,
            "by_code": dict(sorted(per_code.items())),
            "input_errors": len(self.input_errors),
        }

    def statistics(self) -> list[dict[str, Any]]:
        """Counts per code (ruff's --statistics): code, count of findings, occurrences (a grouped finding, e.g. one
        per tokenization cause, stands for `extra["count"]` samples) and the worst severity among its findings."""
        rows: dict[str, dict[str, Any]] = {}
        for f in self.findings:
            row = rows.setdefault(f.code, {"code": f.code, "count": 0, "occurrences": 0, "severity": f.severity})
            row["count"] += 1
            row["occurrences"] += int(f.extra.get("count", 1) or 1)
            row["severity"] = max(row["severity"], f.severity)
        return sorted(rows.values(), key=lambda r: (-r["count"], r["code"]))

    def exit_code(self, fail_on: Severity) -> int:
        """0 clean, 1 findings at or above `fail_on`, 2 when some input could not be read."""
        if self.input_errors:
            return 2
        return 1 if self.at_or_above(fail_on) else 0


class InputError(Exception):
    """An input llava-doctor cannot read at all. The CLI prints it as one line and exits 2."""


def one_line(value: Any, limit: int | None = None) -> str:
    """`value` (a message, or an exception quoted in one) as one line: whitespace runs collapsed, cut to
    `limit` characters; an exception without a message gives its type name."""
    text = " ".join(str(value).split())
    if not text and isinstance(value, BaseException):
        text = type(value).__name__
    return text if limit is None else text[:limit]


def example_names(items: Iterable[Any], limit: int) -> str:
    """The first `limit` names of `items` (anything with a ``.name``) for a message, ", ..." when there are more."""
    names = [item.name for item in items]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def unknown_value(what: str, value: str, known: Iterable[str], *, where: str = "", listed: str | None = None) -> InputError:
    """The one-line usage error for a name that is not one of `known`, with the closest match (as ruff does).

    `listed` replaces the full list of known names in the message (for long lists: a summary and where to look).
    """
    import difflib

    known = list(known)
    close = difflib.get_close_matches(str(value), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    prefix = f"{where}: " if where else ""
    return InputError(f"{prefix}unknown {what} {value!r}{hint}; known: {listed if listed is not None else ', '.join(known)}")
