"""`llava-doctor reproduce`: build a named failure scenario (or its fixed twin) with the bundled core."""
from __future__ import annotations

from pathlib import Path

import click

from ..findings import InputError
from ..progress import progress_allowed, progress_bar
from .common import guarded


@click.command()
@click.argument("name", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory to write the artifacts into.")
@click.option("--fixed", is_flag=True, help="Build the healthy twin instead of the failure.")
@click.option("--all", "all_", is_flag=True, help="Build every scenario and its twin into OUT/NAME and OUT/NAME-fixed.")
@click.option("--list", "list_", is_flag=True, help="List the scenarios and exit.")
@guarded
def reproduce(name: str | None, out_dir: str | None, fixed: bool, all_: bool, list_: bool) -> int:
    """Recreate a real LLaVA training failure (or, with --fixed, its healthy twin) in seconds on a CPU.

    Writes the artifacts and a README.txt saying what was done, what a user would have seen and
    which llava-doctor command shows it. On a terminal, a line shows the scenario being built.
    """
    from .. import reproduce as scenarios

    if list_:
        width = max(len(n) for n in scenarios.names())
        for scenario_name in scenarios.names():
            click.echo(f"{scenario_name:<{width}}  {scenarios.get(scenario_name).title}")
        return 0
    if all_ and name:
        raise InputError("give either a scenario NAME or --all, not both")
    if not name and not all_:
        raise InputError("give a scenario NAME or --all (see `llava-doctor reproduce --list`)")
    if not out_dir:
        raise InputError("give --out DIR for the artifacts")
    if name:
        scenarios.get(name)  # an unknown name fails before anything is written
    jobs = [(n, f, Path(out_dir) / f"{n}{'-fixed' if f else ''}") for n in scenarios.names() for f in (False, True)] \
        if all_ else [(name, fixed, Path(out_dir))]
    for number, (job_name, job_fixed, job_out) in enumerate(jobs, 1):
        label = f"{job_name}{' (fixed twin)' if job_fixed else ''}"
        counter = f" ({number}/{len(jobs)})" if len(jobs) > 1 else ""
        bar = progress_bar(None, progress_allowed(), f"building {label}{counter}", ticking=True)
        try:
            result = scenarios.build(job_name, job_out, fixed=job_fixed)
        except OSError as exc:  # an unwritable or vanished --out: one line, never a traceback
            where = exc.filename or job_out
            raise InputError(f"cannot write {label} to {where}: {exc.strerror or exc}") from None
        finally:
            if bar is not None:
                bar.close()
        click.echo(f"{label}: written to {result.out_dir} in {result.seconds:.1f} s")
        if not all_:
            click.echo(f"read {result.readme}")
        click.echo(f"then run: {result.command}")
    return 0
