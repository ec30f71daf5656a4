"""`llava-doctor demo`: the main job on the embedded default.

The bundled core builds every failure scenario and its fixed twin into one folder (tiny LLaVA
models, real DeepSpeed runs, exports, datasets), then llava-doctor examines each with the commands
the scenario names (``a ; b ; c`` - each run with ``--format json`` so that the codes that fired are
known, not guessed from an exit code), and a table says which were caught and which twins came out
clean. A code "fired" when a command reported it at or above its --fail-on severity (error unless
the scenario says otherwise); a broken scenario counts as caught only when one of its own codes fired,
and a twin is clean when none of them fired and every command exited 0.
"""
from __future__ import annotations

import io
import json
import shlex
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..progress import progress_allowed, progress_bar
from .common import EXIT_ERROR, guarded

SEPARATOR = ";"


@dataclass
class CommandRun:
    command: str
    exit_code: int | None  # None: this build has no such command
    codes: list[str] = field(default_factory=list)  # codes reported at or above the command's --fail-on (they fired)
    lines: list[str] = field(default_factory=list)  # what to show: findings and errors, one line each


def split_commands(command: str) -> list[list[str]]:
    """`llava-doctor a ... ; llava-doctor b ...` -> [argv, argv] (a trailing `   # comment` is dropped)."""
    argv = shlex.split(command.split("   #", 1)[0], comments=True)
    commands, current = [], []
    for token in argv + [SEPARATOR]:
        if token == SEPARATOR:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    return commands


def run_command(argv: list[str]) -> CommandRun:
    """Run one `llava-doctor ...` command in-process with JSON output; its exit code and the codes that fired."""
    from . import main

    from ..findings import Severity

    run = CommandRun(shlex.join(argv), None)
    if not argv or argv[0] != "llava-doctor" or len(argv) < 2 or main.get_command(None, argv[1]) is None:
        return run
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main.main([*argv[1:], "--format", "json"], prog_name="llava-doctor", standalone_mode=False)
            run.exit_code = 0
        except SystemExit as exc:
            run.exit_code = int(exc.code or 0)
        except click.ClickException as exc:
            err.write(f"llava-doctor: error: {exc.format_message()}\n")
            run.exit_code = EXIT_ERROR
    try:
        findings = json.loads(out.getvalue()).get("findings", [])
    except ValueError:
        findings = []
    fail_on = Severity.parse(argv[argv.index("--fail-on") + 1]) if "--fail-on" in argv[:-1] else Severity.ERROR
    run.codes = [f["code"] for f in findings if Severity.parse(f["severity"]) >= fail_on]
    run.lines = [f"{f['code']} {f['severity']}: {f['message']}" for f in findings]
    run.lines += [line for line in err.getvalue().splitlines() if line.startswith("llava-doctor: error")]
    return run


def verdict(variant: str, codes: tuple[str, ...], runs: list[CommandRun]) -> str:
    """broken: CAUGHT when one of the scenario's codes fired; fixed: clean when none fired and all exited 0."""
    ran = [r for r in runs if r.exit_code is not None]
    if not ran:
        return "no check yet"
    fired = {c for r in ran for c in r.codes} & set(codes)
    errors = any(r.exit_code == EXIT_ERROR for r in ran)
    if variant == "broken":
        return "CAUGHT" if fired else "error" if errors else "missed"
    if fired or any(r.exit_code == 1 for r in ran):
        return "FALSE ALARM"
    return "error" if errors else "clean"


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Folder for the scenarios' artifacts (created; reused scenario folders are rebuilt).")
@click.option("--only", multiple=True, metavar="NAME", help="Only these scenarios (see `llava-doctor reproduce --list`).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary table.")
@guarded
def demo(out, only, quiet) -> int:
    """Build every failure scenario and its fixed twin with the bundled core, then diagnose each."""
    from .. import reproduce

    names = list(only) or reproduce.names()
    for name in names:
        reproduce.get(name)  # unknown names fail before any work
    root = Path(out)
    rows = []
    for name in names:
        scenario = reproduce.get(name)
        for fixed in (False, True):
            variant = "fixed" if fixed else "broken"
            start = time.perf_counter()
            bar = progress_bar(None, progress_allowed(), f"{name} ({variant}): building and diagnosing", ticking=True)
            try:
                result = reproduce.build(name, root / name / variant, fixed=fixed)
                runs = [run_command(argv) for argv in split_commands(result.command)]
            except reproduce.MissingDependency as exc:  # say it was not built; never count it as checked
                command = f"llava-doctor reproduce {name}{' --fixed' if fixed else ''} --out {root / name / variant}"
                result, runs = None, [CommandRun(command, EXIT_ERROR, lines=[f"not built: {exc}"])]
            finally:
                if bar is not None:
                    bar.close()
            seconds = time.perf_counter() - start
            rows.append((name, variant, runs, seconds, scenario.codes))
            if not quiet:
                _show(name, variant, result, runs)
    click.echo(f"\n{'scenario':24} {'variant':8} {'exit':>4}  {'verdict':13} {'seconds':>7}  codes fired (scenario's codes)")
    caught = checked = false_alarms = errors = 0
    for name, variant, runs, seconds, codes in rows:
        decided = verdict(variant, codes, runs)
        exits = [r.exit_code for r in runs if r.exit_code is not None]
        fired = sorted({c for r in runs for c in r.codes})
        checked += variant == "broken" and decided != "no check yet"
        caught += decided == "CAUGHT"
        false_alarms += decided == "FALSE ALARM"
        errors += decided == "error" or (decided == "CAUGHT" and EXIT_ERROR in exits)
        click.echo(f"{name:24} {variant:8} {max(exits) if exits else '-':>4}  {decided:13} {seconds:7.1f}  "
                   f"{','.join(fired) or '-'} ({','.join(codes)})")
    failed = f", {errors} with a command that could not run (exit 2)" if errors else ""
    click.echo(f"\n{caught} of {checked} checked failures caught, {false_alarms} false alarm(s) on the fixed twins{failed}; "
               f"artifacts and README.txt files in {root}/")
    return 0 if caught == checked and not false_alarms and not errors else 1


def _show(name: str, variant: str, result, runs: list[CommandRun]) -> None:
    click.secho(f"\n=== {name} ({variant})", bold=True)
    for run in runs:
        click.echo(f"$ {run.command}")
        if run.exit_code is None:
            click.echo(f"  (not in this build; the artifact and its facts are in {result.out_dir}, see README.txt)")
            continue
        for line in run.lines or ["no findings"]:
            click.echo(f"  {line}")
        click.echo(f"  exit {run.exit_code}")
