"""`llava-doctor reproduce`: build a named failure scenario (or its fixed twin) with the bundled core."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..findings import InputError

EXIT_ERROR = 2


@click.command()
@click.argument("name", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory to write the artifacts into.")
@click.option("--fixed", is_flag=True, help="Build the healthy twin instead of the failure.")
@click.option("--all", "all_", is_flag=True, help="Build every scenario and its twin into OUT/NAME and OUT/NAME-fixed.")
@click.option("--list", "list_", is_flag=True, help="List the scenarios and exit.")
def reproduce(name: str | None, out_dir: str | None, fixed: bool, all_: bool, list_: bool) -> None:
    """Recreate a real LLaVA training failure (or, with --fixed, its healthy twin) in seconds on a CPU.

    Writes the artifacts and a README.txt saying what was done, what a user would have seen and
    which llava-doctor command shows it.
    """
    from .. import reproduce as scenarios

    if list_:
        width = max(len(n) for n in scenarios.names())
        for scenario_name in scenarios.names():
            click.echo(f"{scenario_name:<{width}}  {scenarios.get(scenario_name).title}")
        return
    if all_ and name:
        _fail("give either a scenario NAME or --all, not both")
    if not name and not all_:
        _fail("give a scenario NAME or --all (see `llava-doctor reproduce --list`)")
    if not out_dir:
        _fail("give --out DIR for the artifacts")
    jobs = [(n, f, Path(out_dir) / f"{n}{'-fixed' if f else ''}") for n in scenarios.names() for f in (False, True)] \
        if all_ else [(name, fixed, Path(out_dir))]
    try:
        for job_name, job_fixed, job_out in jobs:
            scenarios.get(job_name)
            result = scenarios.build(job_name, job_out, fixed=job_fixed)
            click.echo(f"{job_name}{' (fixed twin)' if job_fixed else ''}: written to {result.out_dir} in {result.seconds:.1f} s")
            if not all_:
                click.echo(f"read {result.readme}")
            click.echo(f"then run: {result.command}")
    except InputError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    click.echo(f"llava-doctor reproduce: error: {message}", err=True)
    sys.exit(EXIT_ERROR)
