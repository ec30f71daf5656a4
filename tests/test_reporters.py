"""Output formats: the JSON contract, SARIF 2.1.0 shape, JUnit XML, GitHub annotations, text for people."""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse
from xml.etree import ElementTree as ET

import pytest

from llava_doctor.findings import Finding, Report, Severity
from llava_doctor.registry import all_checks
from llava_doctor.reporters import available, get_reporter
from llava_doctor.reporters.json import render_statistics_json
from llava_doctor.reporters.text import render_statistics_text


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


def _with_errors() -> Report:
    report = _report()
    report.add_input_error("gone.safetensors", "gone.safetensors: no such file or directory")
    report.add_input_error("/elsewhere/fifo", "refusing a FIFO")
    return report


def test_json_contract():
    doc = json.loads(get_reporter("json").render(_report()))
    assert doc["version"] == 1
    assert set(doc) >= {"version", "findings", "errors", "summary"} and doc["errors"] == []
    for f in doc["findings"]:
        assert {"code", "severity", "message", "artifact", "location", "fix", "doc"} <= set(f)
        assert f["severity"] in ("error", "warning", "info")
    first = doc["findings"][0]
    assert first["observed"] == [0] and first["expected"] == [96, 3, 4, 4] and first["count"] == 3
    assert doc["summary"]["by_severity"] == {"error": 1, "warning": 1, "info": 1}
    assert doc["summary"]["by_code"] == {"LD201": 1, "LD205": 1, "LD208": 1}
    assert first["doc"] == "llava-doctor explain LD201"  # works on any machine the tool is installed on


def test_json_lists_input_errors():
    doc = json.loads(get_reporter("json").render(_with_errors()))
    assert doc["errors"] == [{"artifact": "gone.safetensors", "message": "gone.safetensors: no such file or directory"},
                             {"artifact": "/elsewhere/fifo", "message": "refusing a FIFO"}]
    assert doc["summary"]["input_errors"] == 2


@pytest.mark.parametrize("fmt", ["text", "json", "junit", "sarif", "github"])
def test_output_is_deterministic(fmt):
    assert get_reporter(fmt).render(_report()) == get_reporter(fmt).render(_report())


def _sarif(report: Report) -> dict:
    return json.loads(get_reporter("sarif").render(report, rules=all_checks()))


def _resolve(location: dict, bases: dict) -> str:
    """An artifactLocation as SARIF 2.1.0 resolves it; a base id means a relative uri, none an absolute one."""
    uri = location["uri"]
    if "uriBaseId" in location:
        assert not urlparse(uri).scheme and not uri.startswith("/"), uri
        return bases[location["uriBaseId"]]["uri"] + uri
    assert urlparse(uri).scheme == "file", uri
    return uri


def test_sarif_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = _sarif(_report())
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert ids == sorted(ids) == ["LD201", "LD205", "LD208"]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels == {"LD201": "error", "LD205": "warning", "LD208": "note"}
    for r in run["results"]:
        assert ids[r["ruleIndex"]] == r["ruleId"]
        assert r["message"]["text"]
    assert run["invocations"] == [{"executionSuccessful": True, "toolExecutionNotifications": []}]


def test_sarif_uris_resolve_to_absolute_file_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = Report()
    for artifact in ("ckpt dir/model.safetensors", str(tmp_path / "abs-inside"), "/elsewhere/ckpt", "../up/ckpt"):
        report.add_artifact(artifact)
        report.extend([Finding("LD201", Severity.ERROR, "m", artifact, "k")])
    run = _sarif(report)["runs"][0]
    bases = run["originalUriBaseIds"]
    assert bases == {"%SRCROOT%": {"uri": tmp_path.resolve().as_uri() + "/"}}
    resolved = {unquote(urlparse(_resolve(r["locations"][0]["physicalLocation"]["artifactLocation"], bases)).path)
                for r in run["results"]}
    assert resolved == {str(tmp_path.resolve() / "ckpt dir/model.safetensors"), str(tmp_path.resolve() / "abs-inside"),
                        "/elsewhere/ckpt", os.path.abspath(tmp_path.resolve() / "../up/ckpt")}


def test_sarif_rules_carry_their_documentation_and_a_help_uri_that_exists():
    run = _sarif(_report())["runs"][0]
    for rule in run["tool"]["driver"]["rules"]:
        assert rule["help"]["markdown"].startswith(f"#### {rule['id']}") and "**Fix.**" in rule["help"]["markdown"]
        uri = urlparse(rule["helpUri"])
        assert uri.scheme == "file" and uri.fragment == rule["id"].lower()
        path = Path(unquote(uri.path))
        assert path.is_file() and f"## {rule['id']}" in path.read_text(encoding="utf-8")
    assert urlparse(run["tool"]["driver"]["informationUri"]).scheme == "file"


def test_sarif_reports_unreadable_inputs_as_tool_notifications(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    invocation = _sarif(_with_errors())["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    notes = invocation["toolExecutionNotifications"]
    assert [n["level"] for n in notes] == ["error", "error"] and notes[1]["message"]["text"] == "refusing a FIFO"
    assert notes[1]["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": "file:///elsewhere/fifo"}


def test_junit_is_xml_with_a_failure_per_finding_and_a_pass_per_clean_artifact():
    root = ET.fromstring(get_reporter("junit").render(_report()))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"ckpt-a", "ckpt-b", "clean"}
    assert len(list(suites["ckpt-a"].iter("failure"))) == 2
    assert not list(suites["clean"].iter("failure")) and len(list(suites["clean"].iter("testcase"))) == 1


@pytest.mark.parametrize("report", [_report, _with_errors, Report], ids=["findings", "input errors", "empty"])
def test_junit_counts_equal_the_testcase_elements(report):
    root = ET.fromstring(get_reporter("junit").render(report()))
    for element in (root, *root.iter("testsuite")):
        cases = list(element.iter("testcase"))
        assert int(element.get("tests")) == len(cases)
        assert int(element.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
        assert int(element.get("errors")) == sum(1 for c in cases if c.find("error") is not None)
    if report is _with_errors:
        assert root.get("errors") == "2" and root.find("testsuite[@name='gone.safetensors']/testcase/error") is not None


def test_github_annotations_escape_properties():
    lines = get_reporter("github").render(_report()).splitlines()
    assert lines[0].startswith("::error file=ckpt-a,title=LD201 vision_tower::")
    assert lines[1].startswith("::notice ") and "c%25d" in lines[1]


def test_github_annotates_unreadable_inputs():
    lines = get_reporter("github").render(_with_errors()).splitlines()
    assert lines[-2] == "::error file=gone.safetensors,title=unreadable input::gone.safetensors: no such file or directory"
    assert lines[-1] == "::error file=/elsewhere/fifo,title=unreadable input::refusing a FIFO"


def test_text_groups_by_artifact_and_ends_with_a_summary():
    text = get_reporter("text").render(_report())
    lines = text.splitlines()
    assert lines[0] == "ckpt-a" and "clean: no findings" in text
    assert lines[-1] == "3 finding(s) in 3 artifact(s): 1 error(s), 1 warning(s), 1 info"
    assert "\033[" not in text
    assert "\033[31m" in get_reporter("text").render(_report(), color=True)


def test_text_names_each_unreadable_input_once_and_counts_them():
    lines = get_reporter("text").render(_with_errors()).splitlines()
    assert "cannot read gone.safetensors: no such file or directory" in lines
    assert "cannot read /elsewhere/fifo: refusing a FIFO" in lines
    assert lines[-1].endswith("1 info; 2 input(s) could not be read")


def test_text_prints_a_fix_once_per_code_however_many_findings():
    report = Report(artifacts=["data.json"])
    report.extend(Finding("LD101", Severity.ERROR, f"sample s{i}: mismatch", "data.json", f"s{i}", "Use the right template.",
                          extra={"sample": f"s{i}"}) for i in range(5000))
    report.extend([Finding("LD104", Severity.WARNING, "sample s1: no label", "data.json", "s1", "Shorten it."),
                   Finding("LD104", Severity.WARNING, "sample s2: no label", "data.json", "s2", "A custom fix.")])
    text = get_reporter("text").render(report)
    assert text.count("sample s") == 5002
    assert text.count("Use the right template.") == 1 and text.count("Shorten it.") == 1 and text.count("A custom fix.") == 1
    fixes = text.split("how to fix")[1].splitlines()[1:4]
    assert fixes == ["  LD101  Use the right template.", "  LD104  Shorten it.", "  LD104  A custom fix."]


def test_statistics_count_per_code_most_frequent_first():
    report = _with_errors()
    report.extend([Finding("LD205", Severity.ERROR, "x", "ckpt-a", "y", "re-init")])  # an override made one an error
    lines = render_statistics_text(report, rules=all_checks()).splitlines()
    assert lines[0].split()[:3] == ["2", "LD205", "error"] and lines[1].split()[:3] == ["1", "LD201", "error"]
    assert lines[-3:-1] == ["cannot read gone.safetensors: no such file or directory",
                            "cannot read /elsewhere/fifo: refusing a FIFO"]
    doc = json.loads(render_statistics_json(report, rules=all_checks()))
    assert [(r["code"], r["count"], r["occurrences"], r["severity"]) for r in doc["statistics"]] == \
        [("LD205", 2, 2, "error"), ("LD201", 1, 3, "error"), ("LD208", 1, 1, "info")]  # one LD201 finding stands for 3
    assert lines[1].endswith("(3 occurrences)")
    assert len(doc["errors"]) == 2 and doc["summary"]["findings"] == 4


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
    assert _with_errors().exit_code(Severity.ERROR) == 2
