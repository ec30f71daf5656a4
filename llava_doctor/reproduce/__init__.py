"""Named failure scenarios, each with a fixed twin, built on the bundled core (``llava-doctor reproduce``).

A scenario is one module in this package holding a ``SCENARIO = Scenario(...)``: its name, a title,
what it does (broken and fixed), what a user would have seen, the llava-doctor command that shows
it, and a ``make(out_dir, fixed) -> facts`` function writing the artifacts. ``build`` runs it, writes
``README.txt`` (for people) and ``scenario.json`` (the facts, for tests and tools) into ``out_dir``.
Importing this package is cheap; a scenario imports torch and the core only when it is built.
"""
from __future__ import annotations

import importlib
import json
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..findings import InputError

# name -> module in this package; the order is the order of `--list`
SCENARIO_MODULES = {
    "zero3-save": "zero3_save",
    "frozen-encoder-export": "frozen_encoder_export",
    "tokenization-mismatch": "tokenization_mismatch",
    "loss-collapse": "loss_collapse",
    "llm-not-frozen": "llm_not_frozen",
    "delay-load": "delay_load",
    "nan-logits": "nan_logits",
    "lora-tunable-parts": "lora_tunable_parts",
}
README = "README.txt"
FACTS = "scenario.json"
# optional module a scenario needs -> the llava-doctor extra that installs it
EXTRAS = {"peft": "lora"}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    broken: str  # what was done to get the failure
    fixed: str  # what the twin does differently
    seen: str  # what a user would have seen (exact texts)
    command: str  # the llava-doctor command that shows it; "{out}" is the output directory
    make: Callable[[Path, bool], dict[str, Any]]  # writes the artifacts, returns facts (JSON-able)
    mechanism: str = ""  # how the core recreates it, where that differs from the real systems
    codes: tuple[str, ...] = ()  # the catalogue codes (DESIGN.md) that diagnose it
    fixed_command: str = ""  # the twin's command when it differs (e.g. another template)
    needs: tuple[str, ...] = ()  # optional modules the build imports (see EXTRAS), checked before any work


class MissingDependency(InputError):
    """A scenario needs an optional module this environment lacks."""


@dataclass
class ScenarioResult:
    name: str
    fixed: bool
    out_dir: Path
    command: str
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def readme(self) -> Path:
        return self.out_dir / README


def names() -> list[str]:
    return list(SCENARIO_MODULES)


def get(name: str) -> Scenario:
    module = SCENARIO_MODULES.get(name)
    if module is None:
        raise InputError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_MODULES)}")
    return importlib.import_module(f"{__name__}.{module}").SCENARIO


def build(name: str, out_dir: str | Path, fixed: bool = False) -> ScenarioResult:
    """Write scenario `name` (or its fixed twin) into `out_dir`, with README.txt and scenario.json."""
    scenario = get(name)
    missing = missing_modules(scenario)
    if missing:
        extras = sorted({EXTRAS[m] for m in missing if m in EXTRAS})
        install = [f"'llava-doctor[{','.join(extras)}]'"] if extras else []
        install += [m for m in missing if m not in EXTRAS]
        raise MissingDependency(f"scenario {name} needs {', '.join(missing)}: pip install {' '.join(install)}")
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a directory")
    previous = _previous_scenario(out)
    if previous is None and out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} is not empty and was not written by llava-doctor reproduce; choose an empty or new directory")
    if previous not in (None, name):
        raise InputError(f"{out} holds scenario {previous!r}; choose another directory for {name!r}")
    if previous is not None:
        _remove_previous_build(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    facts = scenario.make(out, fixed)
    seconds = time.perf_counter() - start
    command = ((fixed and scenario.fixed_command) or scenario.command).format(out=_shell_path(out))
    result = ScenarioResult(name=name, fixed=fixed, out_dir=out, command=command, seconds=seconds, facts=facts)
    written = sorted(p.name for p in out.iterdir()) + [README]
    (out / FACTS).write_text(json.dumps(
        {"scenario": name, "fixed": fixed, "command": command, "seconds": round(seconds, 2), "facts": facts,
         "written": sorted(set(written + [FACTS]))},
        indent=2, sort_keys=True, default=str) + "\n")
    (out / README).write_text(render_readme(scenario, result))
    return result


def missing_modules(scenario: Scenario) -> list[str]:
    missing = []
    for module in scenario.needs:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def _previous_scenario(out: Path) -> str | None:
    try:
        return str(json.loads((out / FACTS).read_text())["scenario"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_previous_build(out: Path) -> None:
    """Delete what an earlier build of this directory wrote (listed in its scenario.json), nothing else."""
    try:
        written = json.loads((out / FACTS).read_text()).get("written", [])
    except (OSError, ValueError):
        return
    for name in written:
        path = out / Path(name).name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _shell_path(path: Path) -> str:
    text = str(path)
    return f"'{text}'" if any(c in text for c in " \t'\"$") else text


def render_readme(scenario: Scenario, result: ScenarioResult) -> str:
    def block(title: str, text: str) -> str:
        return f"{title}\n{reflow(text)}\n"

    variant = "FIXED TWIN" if result.fixed else "BROKEN"
    parts = [
        f"llava-doctor reproduce {scenario.name}{' --fixed' if result.fixed else ''}  ({variant})",
        f"{scenario.title}\n",
        block("What was done:", scenario.fixed if result.fixed else scenario.broken),
    ]
    if not result.fixed:
        parts.append(block("What a user would have seen:", scenario.seen))
    else:
        parts.append(block("What the broken run shows instead (llava-doctor reproduce "
                           f"{scenario.name}):", scenario.seen))
    if scenario.mechanism:
        parts.append(block("How the bundled core recreates it:", scenario.mechanism))
    parts.append(f"See it with llava-doctor:\n    {result.command}\n")
    facts = [f"    {k}: {json.dumps(v, default=str)}" for k, v in sorted(result.facts.items())]
    parts.append("Facts of this run (all of them in scenario.json):\n"
                 + "\n".join(line for line in facts if len(line) <= 160) + "\n")
    parts.append(f"Built in {result.seconds:.1f} s.\n")
    return "\n".join(parts)


def reflow(text: str, width: int = 88) -> str:
    """Fill prose paragraphs to `width`; lines indented by 4+ spaces (after dedent) stay verbatim."""
    out: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        if prose:
            out.append(textwrap.fill(" ".join(prose), width, break_on_hyphens=False, break_long_words=False))
            prose.clear()

    for line in textwrap.dedent(text).strip("\n").splitlines():
        if line.startswith("    "):
            flush()
            out.append(line)
        elif not line.strip():
            flush()
            out.append("")
        else:
            prose.append(line.strip())
    flush()
    return "\n".join(out)
