"""`--format sarif`: SARIF 2.1.0, so findings land in code-scanning UIs (GitHub Security tab)."""
from __future__ import annotations

import json

from ..findings import Severity
from . import Reporter

_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


class SarifReporter(Reporter):
    name = "sarif"

    def render(self, report, *, color=False, rules=None) -> str:
        from .. import __version__

        rules = rules or {}
        codes = sorted({f.code for f in report.findings})
        rule_entries = []
        for code in codes:
            check = rules.get(code)
            entry = {"id": code, "helpUri": f"docs/checks.md#{code.lower()}"}
            if check is not None:
                entry.update(
                    name=check.title,
                    shortDescription={"text": check.title},
                    fullDescription={"text": " ".join(check.rationale.split())},
                    help={"text": " ".join(check.fix.split())},
                    defaultConfiguration={"level": _LEVEL[check.severity]},
                )
            rule_entries.append(entry)
        index = {code: i for i, code in enumerate(codes)}
        results = []
        for f in report.findings:
            result = {
                "ruleId": f.code,
                "ruleIndex": index[f.code],
                "level": _LEVEL[f.severity],
                "message": {"text": f"{f.message} Fix: {f.fix}" if f.fix else f.message},
                "locations": [
                    {
                        "physicalLocation": {"artifactLocation": {"uri": f.artifact}},
                        **({"logicalLocations": [{"name": f.location}]} if f.location else {}),
                    }
                ],
            }
            results.append(result)
        doc = {
            "$schema": SARIF_SCHEMA,
            "version": "2.1.0",
            "runs": [
                {
                    "tool": {"driver": {"name": "llava-doctor", "version": __version__, "informationUri": "docs/checks.md", "rules": rule_entries}},
                    "results": results,
                }
            ],
        }
        return json.dumps(doc, indent=2, allow_nan=False, default=str)
