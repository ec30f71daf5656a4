"""`--format junit`: one testsuite per artifact; a failing testcase per finding, a passing one for a clean
artifact, an erroring one for an input that could not be read. Every `tests`/`failures`/`errors`
count is the number of those testcase elements (no timestamps: the output is deterministic)."""
from __future__ import annotations

from xml.etree import ElementTree as ET

from . import Reporter


class JunitReporter(Reporter):
    name = "junit"

    def render(self, report, *, color=False, rules=None) -> str:
        findings: dict[str, list] = {}
        for f in report.findings:
            findings.setdefault(f.artifact, []).append(f)
        errors: dict[str, list[str]] = {}
        for artifact, message in report.input_errors:
            errors.setdefault(artifact, []).append(message)
        order = list(dict.fromkeys([*report.artifacts, *sorted(findings), *errors]))

        suites = ET.Element("testsuites", name="llava-doctor")
        totals = {"tests": 0, "failures": 0, "errors": 0}
        for artifact in order:
            suite = ET.SubElement(suites, "testsuite", name=artifact)
            for f in findings.get(artifact, []):
                case = ET.SubElement(suite, "testcase", classname=f"llava-doctor.{f.code}", name=f"{f.code} {f.location or artifact}")
                failure = ET.SubElement(case, "failure", message=f.message, type=str(f.severity))
                failure.text = f"{f.code} {f.severity}: {f.message}\nfix: {f.fix}\ndoc: {f.doc}"
            for message in errors.get(artifact, []):
                case = ET.SubElement(suite, "testcase", classname="llava-doctor", name=f"{artifact}: read")
                ET.SubElement(case, "error", message=message, type="unreadable input").text = message
            if artifact not in findings and artifact not in errors:
                ET.SubElement(suite, "testcase", classname="llava-doctor", name=f"{artifact}: no findings")
            counts = {"tests": len(suite), "failures": len(findings.get(artifact, [])), "errors": len(errors.get(artifact, []))}
            suite.attrib.update({key: str(value) for key, value in counts.items()}, skipped="0")
            for key, value in counts.items():
                totals[key] += value
        suites.attrib.update({key: str(value) for key, value in totals.items()})
        ET.indent(suites)
        return ET.tostring(suites, encoding="unicode", xml_declaration=True)
