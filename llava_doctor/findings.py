"""Finding and Report: the one currency every check, reader and reporter shares."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

DOCS_URL = "docs/checks.md"


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


def doc_anchor(code: str) -> str:
    return f"{DOCS_URL}#{code.lower()}"


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
        return doc_anchor(self.code)

    def sort_key(self) -> tuple:
        return (self.artifact, -int(self.severity), self.code, self.location, self.message)

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
            out["observed"] = _jsonable(self.observed)
        if self.expected is not None:
            out["expected"] = _jsonable(self.expected)
        for key, value in sorted(self.extra.items()):
            out.setdefault(key, _jsonable(value))
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
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

    def add_input_error(self, artifact: str, message: str) -> None:
        if (artifact, message) not in self.input_errors:
            self.input_errors.append((artifact, message))

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
        }

    def exit_code(self, fail_on: Severity) -> int:
        """0 clean, 1 findings at or above `fail_on`, 2 when some input could not be read."""
        if self.input_errors:
            return 2
        return 1 if self.at_or_above(fail_on) else 0


class InputError(Exception):
    """An input llava-doctor cannot read at all. The CLI prints it as one line and exits 2."""
