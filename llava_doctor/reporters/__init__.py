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
    """Base class: `render(report, *, color=False, rules=None) -> str`; `rules` maps code -> check class."""

    name = ""

    def render(self, report: Any, *, color: bool = False, rules: dict[str, Any] | None = None) -> str:
        raise NotImplementedError


def _load(spec: str) -> type[Reporter]:
    module, _, attr = spec.partition(":")
    return getattr(import_module(module), attr)


def available() -> dict[str, str]:
    table = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(ep.name, ep.value)
    return dict(sorted(table.items()))


def get_reporter(name: str) -> Reporter:
    table = available()
    if name not in table:
        raise KeyError(f"unknown format {name!r} (choose from {', '.join(table)})")
    return _load(table[name])()
