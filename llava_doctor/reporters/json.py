"""`--format json`: one object {"version": 1, "artifacts", "findings", "errors", "summary"} — a documented
contract (README, "The JSON contract"): fields are added, never removed or renamed without a new version."""
from __future__ import annotations

import json

from . import Reporter

SCHEMA_VERSION = 1


def errors_to_list(report) -> list[dict]:
    return [{"artifact": artifact, "message": message} for artifact, message in report.input_errors]


def report_to_dict(report) -> dict:
    from ..findings import jsonable

    return {
        "version": SCHEMA_VERSION,
        "artifacts": list(report.artifacts),
        "findings": [f.to_dict() for f in report.findings],
        "errors": errors_to_list(report),
        "summary": report.summary(),
        # what each command read and measured beyond its findings (per-component trainable table, comparison
        # counts, generated ids and text, what preflight resolved); no wall-clock times (Report.timings)
        "stats": jsonable(report.stats),
    }


def _dump(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, allow_nan=False, default=str)


class JsonReporter(Reporter):
    name = "json"

    def render(self, report, *, color=False, rules=None) -> str:
        return _dump(report_to_dict(report))


def render_statistics_json(report, *, rules=None) -> str:
    """`--statistics --format json`: {"version", "statistics": [{code, count, occurrences, severity, title, doc}], "errors", "summary"}."""
    from ..findings import explain_command

    rules = rules or {}
    rows = [{"code": r["code"], "count": r["count"], "occurrences": r["occurrences"], "severity": str(r["severity"]),
             "title": getattr(rules.get(r["code"]), "title", ""), "doc": explain_command(r["code"])}
            for r in report.statistics()]
    return _dump({"version": SCHEMA_VERSION, "statistics": rows, "errors": errors_to_list(report),
                  "summary": report.summary()})
