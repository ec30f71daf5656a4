"""`llava-doctor demo`: the main job on the embedded default.

The bundled core builds every failure scenario and its fixed twin into one folder (tiny LLaVA
models, real DeepSpeed runs, exports, datasets), then llava-doctor examines each with the command
the scenario names, and a table says which were caught and which twins came out clean.
"""
from __future__ import annotations

import io
import shlex
import time
from contextlib import redirect_stdout
from pathlib import Path

import click

from .common import EXIT_ERROR, guarded


def _run_command(command: str) -> tuple[int | None, str]:
    """Run a `llava-doctor ...` command line in-process; None when this build has no such command."""
    from . import main

    argv = shlex.split(command.split("   #", 1)[0], comments=True)
    if not argv or argv[0] != "llava-doctor":
        return None, ""
    if main.get_command(None, argv[1]) is None:
        return None, ""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        try:
            main.main(argv[1:], prog_name="llava-doctor", standalone_mode=False)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        except click.ClickException as exc:
            buffer.write(f"llava-doctor: error: {exc.format_message()}\n")
            code = EXIT_ERROR
    return code, buffer.getvalue()


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Folder for the scenarios' artifacts (created; reused scenario folders are rebuilt).")
@click.option("--only", multiple=True, metavar="NAME", help="Only these scenarios (see `llava-doctor reproduce --list`).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary table.")
@guarded
def demo(out, only, quiet) -> int:
    """Build every failure scenario and its fixed twin with the bundled core, then diagnose each."""
    from .. import reproduce
    from ..registry import all_checks

    names = list(only) or reproduce.names()
    for name in names:
        reproduce.get(name)  # unknown names fail before any work
    root = Path(out)
    rows = []
    for name in names:
        scenario = reproduce.get(name)
        known = [c for c in scenario.codes if c in all_checks()]
        for fixed in (False, True):
            variant = "fixed" if fixed else "broken"
            start = time.perf_counter()
            result = reproduce.build(name, root / name / variant, fixed=fixed)
            code, text = _run_command(result.command) if known else (None, "")
            seconds = time.perf_counter() - start
            rows.append((name, variant, code, seconds, scenario.codes))
            if not quiet:
                click.secho(f"\n=== {name} ({variant}) — {result.command}", bold=True)
                click.echo(text.rstrip() if code is not None else
                           f"(not diagnosed yet: its checks {', '.join(scenario.codes)} are in the catalogue but not "
                           f"built; the artifact and its facts are in {result.out_dir}, see README.txt)")
    click.echo("\nscenario                 variant  exit  verdict        seconds  codes")
    caught = 0
    for name, variant, code, seconds, codes in rows:
        if code is None:
            verdict = "no check yet"
        elif variant == "broken":
            verdict = "CAUGHT" if code == 1 else "missed" if code == 0 else "error"
            caught += code == 1
        else:
            verdict = "clean" if code == 0 else "FALSE ALARM" if code == 1 else "error"
        click.echo(f"{name:24} {variant:8} {'-' if code is None else code:>4}  {verdict:13} {seconds:7.1f}  {','.join(codes)}")
    checked = sum(1 for n, v, c, _, _ in rows if v == "broken" and c is not None)
    false_alarms = sum(1 for n, v, c, _, _ in rows if v == "fixed" and c == 1)
    click.echo(f"\n{caught} of {checked} checked failures caught, {false_alarms} false alarm(s) on the fixed twins; "
               f"artifacts and README.txt files in {root}/")
    return 0 if caught == checked and not false_alarms else 1
