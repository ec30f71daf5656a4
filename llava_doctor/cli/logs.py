"""`llava-doctor logs PATH...`: what a finished (or running) training log says went wrong.

LD401/LD402 (loss 0, hidden NaN), LD403/LD104 (batches / samples without a supervised token, when
the log carries LlavaDoctorCallback's label counts), LD404 (grad norm stuck), LD405 (first loss
implausible, with the config.json saved beside trainer_state.json), LD406 (a log cut short), and
LD101 from a text log's own `WARNING: tokenization mismatch` prints.
"""
from __future__ import annotations

import click

from .common import emit, guarded, output_options, resolve_settings


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False))
@click.option("--min-run", type=click.IntRange(min=1), default=3, show_default=True, metavar="K",
              help="Logged steps in a row before a zero loss, a non-finite or a zero grad norm counts.")
@output_options
@guarded
def logs(paths, min_run, select, ignore, fail_on, fmt, exit_zero, output) -> int:
    """Check training logs: trainer_state.json (or a run directory holding one), JSONL, or a text log with
    the Trainer's printed {'loss': ...} lines and LLaVA's tokenization-mismatch warnings."""
    from ..api import check_logs

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, kinds=("TrainingLog",))
    report = check_logs(list(paths), select=settings.select, ignore=settings.ignore, min_run=min_run,
                        severity=settings.severity)
    return emit(report, settings, output=output, exit_zero=exit_zero)
