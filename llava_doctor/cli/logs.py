"""`llava-doctor logs PATH...`: loss pathologies in a finished run's log (LD401, LD402)."""
from __future__ import annotations

import click

from .common import emit, guarded, output_options, resolve_settings


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False))
@click.option("--min-run", type=click.IntRange(min=1), default=3, show_default=True, metavar="K",
              help="Logged steps in a row before a zero loss (or a non-finite grad norm) counts.")
@output_options
@guarded
def logs(paths, min_run, select, ignore, fail_on, fmt, exit_zero, output) -> int:
    """Check training logs: trainer_state.json (or a run directory holding one), JSONL, or a text log with
    the Trainer's printed {'loss': ...} lines."""
    from ..api import check_logs

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt)
    report = check_logs(list(paths), select=settings.select, ignore=settings.ignore, min_run=min_run,
                        severity=settings.severity)
    return emit(report, settings, output=output, exit_zero=exit_zero)
