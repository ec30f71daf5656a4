from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

from llava_doctor import registry
from llava_doctor.docs import check_text, render_markdown
from llava_doctor.findings import InputError
from llava_doctor.registry import (
    Check, RegistryError, all_checks, check_patterns, code_ranges, matches, select_checks, selection_gaps, validate,
)

ROOT = Path(__file__).resolve().parent.parent


def test_builtin_checks_are_found_under_the_package_name_only():
    checks = all_checks(refresh=True)
    assert checks, "no built-in checks found"
    for code, check in checks.items():
        assert code.startswith("LD") and len(code) == 5
        assert check.__module__.startswith("llava_doctor.checks."), check.__module__
    assert "checks" not in sys.modules or not hasattr(sys.modules["checks"], "__path__") or \
        Path(sys.modules["checks"].__path__[0]).resolve() != (ROOT / "checks").resolve()


def test_codes_follow_the_catalogue_shape():
    for code, check in all_checks().items():
        assert check.title and check.rationale.strip() and check.fix.strip()
        assert check.kinds() and set(check.kinds()) <= set(registry.ARTIFACT_KINDS)


def test_selection_prefixes():
    assert matches("LD201", ["LD2"]) and matches("LD201", ["ALL"]) and not matches("LD101", ["LD2"])


class _Plugin(Check):
    code = "XY001"
    title = "a third-party check"
    artifact = "Checkpoint"
    rationale = "proves plugin discovery"
    fix = "none"

    def run(self, artifact, context):
        yield self.finding("plugin ran", artifact="x")


class _FakeEntryPoint:
    name, value = "xy", "tests.test_registry:_Plugin"

    def load(self):
        return _Plugin


def test_third_party_checks_come_from_the_entry_point_group(monkeypatch):
    real = metadata.entry_points

    def fake(group=None, **kw):
        return [_FakeEntryPoint()] if group == registry.ENTRY_POINT_GROUP else real(group=group, **kw)

    monkeypatch.setattr(registry.metadata, "entry_points", fake)
    checks = all_checks(refresh=True)
    try:
        assert checks["XY001"] is _Plugin
    finally:
        monkeypatch.undo()
        all_checks(refresh=True)


def test_plugins_may_not_claim_builtin_codes():
    class Bad(_Plugin):
        code = "LD999"

    with pytest.raises(RegistryError, match="reserved"):
        validate(Bad, builtin=False)


def test_invalid_code_rejected():
    class Bad(_Plugin):
        code = "bad"

    with pytest.raises(RegistryError, match="not like"):
        validate(Bad, builtin=False)


def test_docs_are_generated_from_the_checks():
    committed = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), "docs/checks.md is stale: run `python -m llava_doctor.docs > docs/checks.md`"
    for code in all_checks():
        assert f"## {code}" in committed


def test_patterns_are_normalised_and_unknown_ones_refused_with_the_closest_code():
    assert check_patterns([" ld2 ", "ALL", "LD201", ""]) == ("LD2", "ALL", "LD201")
    with pytest.raises(InputError, match=r"--select: unknown code or prefix 'LD2011' \(did you mean LD201\?\)"):
        check_patterns(["LD2011"], where="--select")
    with pytest.raises(InputError, match="known: ALL, LD101-"):
        check_patterns(["E501"])


def test_the_api_refuses_unknown_codes_too():
    with pytest.raises(InputError, match="select: unknown code"):
        select_checks("Checkpoint", select=["LD2x"])
    with pytest.raises(InputError, match="ignore: unknown code"):
        select_checks("Checkpoint", ignore=["LD999"])


def test_selection_gaps_name_the_kinds_left_without_a_check():
    assert selection_gaps(["Checkpoint", "Dataset"]) == {}
    gaps = selection_gaps(["Checkpoint", "Dataset"], select=["LD1"])
    assert list(gaps) == ["Checkpoint"] and gaps["Checkpoint"].startswith("its checks are LD201-")
    assert selection_gaps(["Checkpoint"], select=["LD204", "LD205"]) == {"Checkpoint": "LD204-LD205 read tensor data: add --deep"}
    assert selection_gaps(["Checkpoint"], select=["LD204"], deep=True) == {}
    assert selection_gaps(["Checkpoint"], ignore=["LD2", "LD3"])["Checkpoint"].startswith("its checks are")


def test_code_ranges_compress_consecutive_codes():
    assert code_ranges(["LD203", "LD201", "LD202", "LD205", "XY001", "XY002"]) == "LD201-LD203, LD205, XY001-XY002"


def test_the_catalogue_documents_built_ins_and_explain_renders_any_check():
    markdown = render_markdown()
    assert "XY001" not in markdown
    text = check_text(_Plugin)
    assert text.startswith("XY001: a third-party check") and "proves plugin discovery" in text and "Fix:" in text
    assert "Reference:" not in text  # no documentation file of ours describes a plugin
