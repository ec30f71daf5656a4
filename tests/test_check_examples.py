"""Every check proves itself on its own examples (the way Fixit generates tests from VALID/INVALID)."""
from __future__ import annotations

import pytest

from llava_doctor.registry import Context, all_checks

CHECKS = all_checks()


def _params(kind: str) -> list:
    return [pytest.param(code, ex, id=f"{code}-{ex.name}") for code, check in CHECKS.items() for ex in getattr(check, kind)]


INVALID = _params("invalid")
VALID = _params("valid")


def _run(code, example):
    check = CHECKS[code]()
    context = example.context() if example.context else Context(deep=check.deep)
    return [f for f in check.run(example.build(), context)]


@pytest.mark.parametrize("code,example", INVALID)
def test_invalid_example_fires(code, example):
    findings = _run(code, example)
    own = [f for f in findings if f.code == code]
    assert own, f"{code} stayed silent on its invalid example {example.name!r}"
    if example.count is not None:
        assert len(own) == example.count, [f.message for f in own]
    for text in example.contains:
        assert any(text in f.message for f in own), (text, [f.message for f in own])
    for f in own:
        assert f.message and "\n" not in f.message and f.fix and f.artifact


@pytest.mark.parametrize("code,example", VALID)
def test_valid_example_is_silent(code, example):
    findings = [f for f in _run(code, example) if f.code == code]
    assert not findings, [f.message for f in findings]


@pytest.mark.parametrize("code", sorted(CHECKS))
def test_every_check_has_both_kinds_of_example(code):
    check = CHECKS[code]
    assert check.invalid, f"{code} has no invalid example"
    assert check.valid, f"{code} has no valid example"
