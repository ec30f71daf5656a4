"""`llava-doctor reproduce`: build a named failure scenario (or its fixed twin) with the bundled core."""
from __future__ import annotations

import sys

import click

from ..findings import InputError

EXIT_ERROR = 2


@click.command()
@click.argument("name", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory to write the artifacts into.")
@click.option("--fixed", is_flag=True, help="Build the healthy twin instead of the failure.")
@click.option("--list", "list_", is_flag=True, help="List the scenarios and exit.")
def reproduce(name: str | None, out_dir: str | None, fixed: bool, list_: bool) -> None:
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
    if not name:
        _fail("give a scenario NAME (see `llava-doctor reproduce --list`)")
    if not out_dir:
        _fail("give --out DIR for the artifacts")
    try:
        scenarios.get(name)
        result = scenarios.build(name, out_dir, fixed=fixed)
    except InputError as exc:
        _fail(str(exc))
    click.echo(f"{name}{' (fixed twin)' if fixed else ''}: written to {result.out_dir} in {result.seconds:.1f} s")
    click.echo(f"read {result.readme}")
    click.echo(f"then run: {result.command}")


def _fail(message: str) -> None:
    click.echo(f"llava-doctor reproduce: error: {message}", err=True)
    sys.exit(EXIT_ERROR)
