"""`--format json`: one object {"version": 1, "findings": [...], "summary": {...}} — a documented contract."""
from __future__ import annotations

import json

from . import Reporter

SCHEMA_VERSION = 1


def report_to_dict(report) -> dict:
    return {
        "version": SCHEMA_VERSION,
        "artifacts": list(report.artifacts),
        "findings": [f.to_dict() for f in report.findings],
        "summary": report.summary(),
    }


class JsonReporter(Reporter):
    name = "json"

    def render(self, report, *, color=False, rules=None) -> str:
        return json.dumps(report_to_dict(report), indent=2, sort_keys=False, allow_nan=False, default=str)
