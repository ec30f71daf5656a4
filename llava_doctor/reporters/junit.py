"""`--format junit`: one testsuite per artifact, one failing testcase per finding (no timestamps)."""
from __future__ import annotations

from itertools import groupby
from xml.etree import ElementTree as ET

from . import Reporter


class JunitReporter(Reporter):
    name = "junit"

    def render(self, report, *, color=False, rules=None) -> str:
        suites = ET.Element("testsuites", name="llava-doctor", tests=str(max(len(report.findings), len(report.artifacts))),
                            failures=str(len(report.findings)))
        grouped = {a: list(g) for a, g in groupby(report.findings, key=lambda f: f.artifact)}
        for artifact in report.artifacts or sorted(grouped):
            findings = grouped.get(artifact, [])
            suite = ET.SubElement(suites, "testsuite", name=artifact, tests=str(max(1, len(findings))),
                                  failures=str(len(findings)), errors="0", skipped="0")
            if not findings:
                ET.SubElement(suite, "testcase", classname="llava-doctor", name=f"{artifact}: no findings")
            for f in findings:
                case = ET.SubElement(suite, "testcase", classname=f"llava-doctor.{f.code}",
                                     name=f"{f.code} {f.location or artifact}")
                failure = ET.SubElement(case, "failure", message=f.message, type=str(f.severity))
                failure.text = f"{f.code} {f.severity}: {f.message}\nfix: {f.fix}\ndoc: {f.doc}"
        ET.indent(suites)
        return ET.tostring(suites, encoding="unicode", xml_declaration=True)
