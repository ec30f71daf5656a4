"""Settings from `[tool.llava-doctor]` in the nearest pyproject.toml, merged under the command line.

Every value is checked when the file is read, as ruff does: an unknown key, code, prefix, stage,
template, recipe or format is a one-line usage error naming the closest known value, never a
setting that silently disables checks.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .findings import InputError, Severity, unknown_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNOWN_KEYS = {"select", "ignore", "severity", "fail-on", "template", "recipe", "format", "deep", "stage", "schema"}


@dataclass(frozen=True)
class Settings:
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    severity: Mapping[str, Severity] = field(default_factory=dict)  # per-code overrides
    fail_on: Severity = Severity.ERROR
    template: str | None = None
    recipe: str | None = None
    format: str = "text"
    deep: bool = False
    stage: str | None = None
    schema: bool = True
    source: str | None = None  # the pyproject.toml the settings came from

    def merged(self, **cli: Any) -> "Settings":
        """Command-line values win; None means 'not given on the command line'."""
        return replace(self, **{k: v for k, v in cli.items() if v is not None})


def find_pyproject(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _codes(value: Any, key: str, path: Path) -> tuple[str, ...]:
    from .registry import check_patterns

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{path}: [tool.llava-doctor] {key} must be a list of codes, got {value!r}")
    return check_patterns(value, where=f"{path}: [tool.llava-doctor] {key}")


def known_values(key: str) -> tuple[str, ...]:
    """The names an option accepts: `stage`, `template`, `recipe` or `format` (reporters include plugins)."""
    if key == "stage":
        from .stages import STAGES

        return STAGES
    if key == "template":
        from .templates.codebase import SETUP_VERSIONS
        from .templates.conversation import TEMPLATES

        return tuple(sorted({*TEMPLATES, *SETUP_VERSIONS}))  # v0.5: a --version train.py sets up itself
    if key == "recipe":
        from .templates.recipes import CODEBASES

        return CODEBASES
    if key == "format":
        from .reporters import available

        return tuple(available())
    raise KeyError(key)


def check_value(key: str, value: Any, *, where: str) -> str:
    """`value` if it is a known `key` (see known_values), else a one-line usage error naming the closest."""
    known = known_values(key)
    if not isinstance(value, str) or value not in known:
        raise unknown_value(key, value, known, where=where)
    return value


def parse_settings(table: Mapping[str, Any], path: Path) -> Settings:
    from .registry import expand_severity_overrides

    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise unknown_value("key", unknown[0], sorted(KNOWN_KEYS), where=f"{path}: [tool.llava-doctor]")
    kwargs: dict[str, Any] = {"source": str(path)}
    if "select" in table:
        kwargs["select"] = _codes(table["select"], "select", path)
    if "ignore" in table:
        kwargs["ignore"] = _codes(table["ignore"], "ignore", path)
    if "severity" in table:
        if not isinstance(table["severity"], Mapping):
            raise InputError(f"{path}: [tool.llava-doctor] severity must be a table like {{LD205 = \"info\"}}")
        levels = {str(k): _severity(v, f"severity.{k}", path) for k, v in table["severity"].items()}
        kwargs["severity"] = expand_severity_overrides(levels, where=f"{path}: [tool.llava-doctor] severity")
    if "fail-on" in table:
        kwargs["fail_on"] = _severity(table["fail-on"], "fail-on", path)
    for key in ("template", "recipe", "format", "stage"):
        if key in table:
            kwargs[key] = check_value(key, table[key], where=f"{path}: [tool.llava-doctor] {key}")
    for key in ("deep", "schema"):
        if key in table:
            if not isinstance(table[key], bool):
                raise InputError(f"{path}: [tool.llava-doctor] {key} must be true or false")
            kwargs[key] = table[key]
    return Settings(**kwargs)


def _severity(value: Any, key: str, path: Path) -> Severity:
    try:
        return Severity.parse(value)
    except ValueError as exc:
        raise InputError(f"{path}: [tool.llava-doctor] {key}: {exc}") from None


def load_settings(start: Path | None = None) -> Settings:
    path = find_pyproject(start)
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read settings: {exc}") from None
    table = data.get("tool", {}).get("llava-doctor")
    if table is None:
        return Settings(source=None)
    if not isinstance(table, Mapping):
        raise InputError(f"{path}: [tool.llava-doctor] must be a table")
    return parse_settings(table, path)
