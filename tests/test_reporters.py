"""Output formats: the JSON contract, SARIF 2.1.0 shape, JUnit XML, GitHub annotations, text for people."""
from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest

from llava_doctor.findings import Finding, Report, Severity
from llava_doctor.reporters import available, get_reporter


def _report() -> Report:
    report = Report()
    for name in ("ckpt-a", "ckpt-b", "clean"):
        report.add_artifact(name)
    report.extend([
        Finding("LD205", Severity.WARNING, "w: all zero", "ckpt-b", "model.norm.weight", "re-init", observed=0, expected="non-zero"),
        Finding("LD201", Severity.ERROR, "vision_tower: 3 of 3 tensors have shape [0]", "ckpt-a", "vision_tower", "gather",
                observed=[0], expected=[96, 3, 4, 4], extra={"count": 3}),
        Finding("LD208", Severity.INFO, "a, b: c%d", "ckpt-a", "vision_tower", "resave"),
    ])
    return report


def test_findings_are_sorted_by_artifact_then_worst_first():
    assert [(f.artifact, f.code) for f in _report().findings] == [("ckpt-a", "LD201"), ("ckpt-a", "LD208"), ("ckpt-b", "LD205")]


def test_json_contract():
    doc = json.loads(get_reporter("json").render(_report()))
    assert doc["version"] == 1
    assert set(doc) >= {"version", "findings", "summary"}
    for f in doc["findings"]:
        assert {"code", "severity", "message", "artifact", "location", "fix", "doc"} <= set(f)
        assert f["severity"] in ("error", "warning", "info")
    first = doc["findings"][0]
    assert first["observed"] == [0] and first["expected"] == [96, 3, 4, 4] and first["count"] == 3
    assert doc["summary"]["by_severity"] == {"error": 1, "warning": 1, "info": 1}
    assert doc["summary"]["by_code"] == {"LD201": 1, "LD205": 1, "LD208": 1}


@pytest.mark.parametrize("fmt", ["text", "json", "junit", "sarif", "github"])
def test_output_is_deterministic(fmt):
    assert get_reporter(fmt).render(_report()) == get_reporter(fmt).render(_report())


def test_sarif_shape():
    doc = json.loads(get_reporter("sarif").render(_report()))
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert ids == sorted(ids) == ["LD201", "LD205", "LD208"]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels == {"LD201": "error", "LD205": "warning", "LD208": "note"}
    for r in run["results"]:
        assert ids[r["ruleIndex"]] == r["ruleId"]
        assert r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]


def test_junit_is_xml_with_a_failure_per_finding_and_a_pass_per_clean_artifact():
    root = ET.fromstring(get_reporter("junit").render(_report()))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"ckpt-a", "ckpt-b", "clean"}
    assert len(list(suites["ckpt-a"].iter("failure"))) == 2
    assert not list(suites["clean"].iter("failure")) and len(list(suites["clean"].iter("testcase"))) == 1


def test_github_annotations_escape_properties():
    lines = get_reporter("github").render(_report()).splitlines()
    assert lines[0].startswith("::error file=ckpt-a,title=LD201 vision_tower::")
    assert lines[1].startswith("::notice ") and "c%25d" in lines[1]


def test_text_groups_by_artifact_and_ends_with_a_summary():
    text = get_reporter("text").render(_report())
    lines = text.splitlines()
    assert lines[0] == "ckpt-a" and "clean: no findings" in text
    assert lines[-1] == "3 finding(s) in 3 artifact(s): 1 error(s), 1 warning(s), 1 info"
    assert "\033[" not in text
    assert "\033[31m" in get_reporter("text").render(_report(), color=True)


def test_all_builtin_formats_available():
    assert set(available()) >= {"text", "json", "junit", "sarif", "github"}
    with pytest.raises(KeyError):
        get_reporter("yaml")


def test_finding_message_must_be_one_line():
    with pytest.raises(ValueError):
        Finding("LD201", Severity.ERROR, "two\nlines", "x")


def test_exit_code_follows_fail_on():
    report = _report()
    assert report.exit_code(Severity.ERROR) == 1
    only_info = Report(findings=[f for f in report.findings if f.severity == Severity.INFO])
    assert only_info.exit_code(Severity.ERROR) == 0 and only_info.exit_code(Severity.INFO) == 1
