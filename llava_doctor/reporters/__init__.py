"""Reporters turn a Report into text; every format is a plugin (entry-point group `llava_doctor.reporters`)."""
from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

ENTRY_POINT_GROUP = "llava_doctor.reporters"
BUILTIN = {
    "text": "llava_doctor.reporters.text:TextReporter",
    "json": "llava_doctor.reporters.json:JsonReporter",
    "junit": "llava_doctor.reporters.junit:JunitReporter",
    "sarif": "llava_doctor.reporters.sarif:SarifReporter",
    "github": "llava_doctor.reporters.github:GithubReporter",
}


class Reporter:
    """Base class: `render(report, *, color=False, rules=None) -> str`; `rules` maps code -> check class.

    A reporter shows `report.findings` and also `report.input_errors` (inputs that could not be read:
    the run exits 2 for them, and the output should say why). `--format NAME` selects any reporter
    registered under the entry-point group, validated against `available()`."""

    name = ""

    def render(self, report: Any, *, color: bool = False, rules: dict[str, Any] | None = None) -> str:
        raise NotImplementedError


def _load(name: str, spec: str) -> type[Reporter]:
    from ..findings import InputError

    module, _, attr = spec.partition(":")
    try:
        return getattr(import_module(module), attr)
    except Exception as exc:  # a broken plugin is the user's to fix: one line, not a traceback
        raise InputError(f"reporter {name!r} ({spec}) failed to load: {type(exc).__name__}: {exc}") from exc


def available() -> dict[str, str]:
    """Format name -> "module:Class": the built-ins, then third-party reporters registered under the
    `llava_doctor.reporters` entry-point group (a plugin cannot replace a built-in name)."""
    table = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(ep.name, ep.value)
    return dict(sorted(table.items()))


def get_reporter(name: str) -> Reporter:
    table = available()
    if name not in table:
        raise KeyError(f"unknown format {name!r} (choose from {', '.join(table)})")
    return _load(name, table[name])()
