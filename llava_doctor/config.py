"""Settings from `[tool.llava-doctor]` in the nearest pyproject.toml, merged under the command line."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .findings import InputError, Severity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMATS = ("text", "json", "junit", "sarif", "github")
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
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{path}: [tool.llava-doctor] {key} must be a list of codes, got {value!r}")
    return tuple(v.strip().upper() for v in value)


def parse_settings(table: Mapping[str, Any], path: Path) -> Settings:
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key(s) in [tool.llava-doctor]: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {"source": str(path)}
    if "select" in table:
        kwargs["select"] = _codes(table["select"], "select", path)
    if "ignore" in table:
        kwargs["ignore"] = _codes(table["ignore"], "ignore", path)
    if "severity" in table:
        if not isinstance(table["severity"], Mapping):
            raise InputError(f"{path}: [tool.llava-doctor] severity must be a table like {{LD205 = \"info\"}}")
        kwargs["severity"] = {str(k).upper(): _severity(v, f"severity.{k}", path) for k, v in table["severity"].items()}
    if "fail-on" in table:
        kwargs["fail_on"] = _severity(table["fail-on"], "fail-on", path)
    for key in ("template", "recipe", "format", "stage"):
        if key in table:
            kwargs[key] = str(table[key])
    if kwargs.get("format", "text") not in FORMATS:
        raise InputError(f"{path}: [tool.llava-doctor] format must be one of {', '.join(FORMATS)}")
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
