from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

from llava_doctor import registry
from llava_doctor.docs import render_markdown
from llava_doctor.registry import Check, RegistryError, all_checks, matches, validate

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
