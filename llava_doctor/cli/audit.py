"""`llava-doctor audit PATH...`: the post-training checkpoint audit."""
from __future__ import annotations

import click

from .common import emit, guarded, output_options, resolve_settings, show_progress

STAGES = ("pretrain", "finetune", "lora")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False))
@click.option("--deep", is_flag=True, default=None, help="Also read all tensor data (NaN/Inf, all-zero/constant), streamed.")
@click.option("--stage", type=click.Choice(STAGES), default=None, help="The training stage that produced the checkpoint.")
@click.option("--base", type=click.Path(exists=False), default=None,
              help="The checkpoint training started from; compares every tensor with it (implies --deep).")
@click.option("--no-schema", "no_schema", is_flag=True, default=False,
              help="Skip the expected-shape schema built from config.json (faster: no transformers import).")
@output_options
@guarded
def audit(paths, deep, stage, base, no_schema, select, ignore, fail_on, fmt, exit_zero, output) -> int:
    """Audit saved checkpoints: files, HF/LLaVA/XTuner/PEFT directories or DeepSpeed run directories.

    An HF Trainer output_dir is audited as its final weights and its latest checkpoint-N; a path that
    cannot be read is reported (exit 2) and the others are still audited.
    """
    from ..api import audit as run_audit

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, stage=stage,
                                deep=True if base is not None else deep,  # a comparison reads tensor data
                                schema=False if no_schema else None, kinds=("Checkpoint",))
    report = run_audit(
        list(paths),
        select=settings.select,
        ignore=settings.ignore,
        deep=settings.deep,
        stage=settings.stage,
        base=base,
        schema=settings.schema,
        progress=show_progress(settings),
        severity=settings.severity,
    )
    return emit(report, settings, output=output, exit_zero=exit_zero)
