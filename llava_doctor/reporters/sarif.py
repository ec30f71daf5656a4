"""`--format sarif`: SARIF 2.1.0, so findings land in code-scanning UIs (GitHub Security tab).

Locations resolve to absolute `file://` URIs: an artifact under the working directory is a relative
URI against the `%SRCROOT%` base, which `originalUriBaseIds` sets to the working directory (the
form GitHub maps onto the repository); one outside it is an absolute `file://` URI. Each rule
carries its full documentation (`help`) and, for built-in checks, `helpUri` pointing at the
documentation installed with the package. Unreadable inputs are tool execution notifications.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from ..findings import Severity
from . import Reporter

_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"


def artifact_location(artifact: str, root: Path) -> dict:
    """`{"uri": "rel/path", "uriBaseId": "%SRCROOT%"}` under `root`, else `{"uri": "file:///abs/path"}`."""
    path = Path(os.path.abspath(root / artifact))
    try:
        relative = path.relative_to(root)
    except ValueError:
        return {"uri": path.as_uri()}
    return {"uri": quote(relative.as_posix()) or ".", "uriBaseId": SRCROOT}


class SarifReporter(Reporter):
    name = "sarif"

    def render(self, report, *, color=False, rules=None) -> str:
        from .. import __version__
        from ..docs import reference_uri, rule_help

        rules = rules or {}
        root = Path(os.path.abspath(os.getcwd()))
        codes = sorted({f.code for f in report.findings})
        rule_entries = []
        for code in codes:
            entry: dict = {"id": code}
            check = rules.get(code)
            if check is not None:
                entry.update(
                    name=check.title,
                    shortDescription={"text": check.title},
                    fullDescription={"text": " ".join(check.rationale.split())},
                    help=rule_help(check),
                    defaultConfiguration={"level": _LEVEL[check.severity]},
                )
            help_uri = reference_uri(code)
            if help_uri:
                entry["helpUri"] = help_uri
            rule_entries.append(entry)
        index = {code: i for i, code in enumerate(codes)}
        results = []
        for f in report.findings:
            location: dict = {"physicalLocation": {"artifactLocation": artifact_location(f.artifact, root)}}
            if f.location:
                location["logicalLocations"] = [{"name": f.location}]
            results.append({
                "ruleId": f.code,
                "ruleIndex": index[f.code],
                "level": _LEVEL[f.severity],
                "message": {"text": f"{f.message} Fix: {f.fix}" if f.fix else f.message},
                "locations": [location],
            })
        notifications = [
            {"level": "error", "message": {"text": message},
             "locations": [{"physicalLocation": {"artifactLocation": artifact_location(artifact, root)}}]}
            for artifact, message in report.input_errors
        ]
        driver: dict = {"name": "llava-doctor", "version": __version__, "rules": rule_entries}
        information_uri = reference_uri()
        if information_uri:
            driver["informationUri"] = information_uri
        doc = {
            "$schema": SARIF_SCHEMA,
            "version": "2.1.0",
            "runs": [
                {
                    "tool": {"driver": driver},
                    "invocations": [{"executionSuccessful": not report.input_errors,
                                     "toolExecutionNotifications": notifications}],
                    "originalUriBaseIds": {SRCROOT: {"uri": root.as_uri().rstrip("/") + "/"}},
                    "results": results,
                }
            ],
        }
        return json.dumps(doc, indent=2, allow_nan=False, default=str)
