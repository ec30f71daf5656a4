"""One finding per cause: per-sample findings of the data audit folded into groups.

Every per-sample finding of LD101-LD105 carries ``group`` (its cause, worded the same for every
sample that shares it) and ``sample`` / ``index``. `FindingGroups` folds them as chunks are audited
(keeping per sample only a compact row, never the finding), merges across worker processes and
torchrun ranks, and turns each group into one finding: its count, the first sample ids, the round
where the drift starts, one full example; the JSON keeps every affected sample as a row.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..findings import Finding

FIRST_IDS = 5
ROW_COLUMNS = ("sample", "index", "observed", "expected", "round", "signature")
_NUMBER = re.compile(r"\d+")


def numbers_out(text: str) -> str:
    """`turn 3 lacks ...` -> `turn N lacks ...`: the wording shared by samples that differ only in counts."""
    return _NUMBER.sub("N", text)


@dataclass
class Group:
    key: tuple[str, str]
    example: Finding
    count: int = 0
    rows: list[list[Any]] = field(default_factory=list)
    rounds: Counter = field(default_factory=Counter)
    signatures: Counter = field(default_factory=Counter)

    def add(self, finding: Finding) -> None:
        extra = finding.extra
        self.count += 1
        signature = extra.get("signature") or None
        self.rows.append([extra.get("sample"), extra.get("index"), finding.observed, finding.expected, extra.get("round"),
                          signature])
        if extra.get("round"):
            self.rounds[extra["round"]] += 1
        if signature:
            self.signatures[signature] += 1
        if finding.severity > self.example.severity:
            self.example = finding

    def merge(self, other: "Group") -> None:
        self.count += other.count
        self.rows.extend(other.rows)
        self.rounds.update(other.rounds)
        self.signatures.update(other.signatures)
        if other.example.severity > self.example.severity:
            self.example = other.example

    def finding(self, first_ids: int = FIRST_IDS) -> Finding:
        example = self.example
        if self.count == 1:
            return Finding(example.code, example.severity, example.message, example.artifact, example.location,
                           example.fix, example.observed, example.expected,
                           {**example.extra, "count": 1, "records": _records(self.rows)})
        self.rows.sort(key=lambda row: (row[1] if isinstance(row[1], int) else -1, str(row[0])))
        ids = [str(row[0]) for row in self.rows[:first_ids]]
        more = f" and {self.count - len(ids):,} more" if self.count > len(ids) else ""
        starts = ""
        if self.rounds:
            common = sorted(self.rounds.items(), key=lambda kv: (-kv[1], kv[0]))
            starts = "; drift starts at round " + ", ".join(
                f"{r} ({n:,} sample{'s' if n != 1 else ''})" for r, n in common[:3])
        shapes = ""
        if self.signatures:
            common = sorted(self.signatures.items(), key=lambda kv: (-kv[1], kv[0]))
            shapes = "; cur_len - total_len: " + ", ".join(f"{sig} ({n:,})" for sig, n in common[:3])
        message = (f"{self.count:,} samples: {self.key[1]}{shapes}{starts}; samples {', '.join(ids)}{more}; e.g. "
                   f"{example.message}")
        extra = {k: v for k, v in example.extra.items() if k not in ("sample", "index", "round")}
        extra.update({"count": self.count, "samples": ids, "example_sample": example.extra.get("sample"),
                      "rounds": dict(sorted(self.rounds.items())), "signatures": dict(sorted(self.signatures.items())),
                      "records": _records(self.rows)})
        return Finding(example.code, example.severity, message, example.artifact,
                       f"{self.count:,} samples (first: sample {ids[0]})", example.fix, self.count, 0, extra)


def _records(rows: list[list[Any]]) -> dict[str, Any]:
    return {"columns": list(ROW_COLUMNS), "rows": rows}


@dataclass
class FindingGroups:
    """Per-sample findings folded by (code, cause); other findings pass through unchanged."""

    groups: dict[tuple[str, str], Group] = field(default_factory=dict)
    other: list[Finding] = field(default_factory=list)

    def add(self, findings: Iterable[Finding]) -> None:
        for f in findings:
            group = f.extra.get("group")
            if group is None or f.extra.get("sample") is None:
                self.other.append(f)
                continue
            key = (f.code, str(group))
            found = self.groups.get(key)
            if found is None:
                found = self.groups[key] = Group(key, f)
            found.add(f)

    def merge(self, other: "FindingGroups") -> None:
        self.other.extend(other.other)
        for key, group in other.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = group
            else:
                mine.merge(group)

    def affected(self) -> set[str]:
        return {str(row[0]) for g in self.groups.values() for row in g.rows}

    def first_affected(self, k: int) -> list[tuple[str, int | None]]:
        """(id, index) of the first k affected samples, in file order."""
        rows = sorted(((row[1] if isinstance(row[1], int) else -1, str(row[0])) for g in self.groups.values()
                       for row in g.rows))
        out: list[tuple[str, int | None]] = []
        for index, sid in rows:
            if (sid, index) not in out:
                out.append((sid, index))
            if len(out) >= k:
                break
        return out

    def findings(self, first_ids: int = FIRST_IDS) -> list[Finding]:
        return self.other + [g.finding(first_ids) for g in self.groups.values()]
