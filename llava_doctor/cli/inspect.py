"""`llava-doctor inspect CKPT`: load a checkpoint the way its inference code does, then run the live checks on it."""
from __future__ import annotations

import click

from .common import emit, guarded, output_options, resolve_settings

STAGES = ("pretrain", "finetune", "lora")


def summary_lines(live: dict) -> list[str]:
    """The loaded model in a few lines: family, stage, tower state, then the per-component table."""
    from ..artifacts.live import format_component_table

    tower = live["tower"]
    state = "not loaded" if tower["loaded"] is False else "loaded" if tower["present"] else "absent"
    lines = [
        f"{live['artifact']}: {live['model_class']} ({live['family']}, layout {live['layout']})",
        f"  stage: {live['stage'] or 'unknown'} ({live['stage_reason']})",
        f"  vision tower: {state}" + (f", delay_load {tower['delay_load']}" if tower["delay_load"] is not None else "")
        + (f" ({tower['model_class']})" if tower["model_class"] else ""),
    ]
    lines += ["  " + line for line in format_component_table(live["components"])]
    return lines + [""]


@click.command()
@click.argument("ckpt", type=click.Path(exists=False))
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where to load the model (auto: cuda when available).")
@click.option("--stage", type=click.Choice(STAGES), default=None,
              help="The stage that produced the checkpoint. Default: inferred from its config's training flags.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Load in this dtype. Default: the config's torch_dtype/dtype.")
@click.option("--model-base", type=click.Path(exists=False), default=None,
              help="The language model a projector-only checkpoint (mm_projector.bin) goes on, as LLaVA's --model-base.")
@output_options
@guarded
def inspect(ckpt, device, stage, dtype, model_base, select, ignore, fail_on, fmt, exit_zero, output) -> int:
    """Load CKPT as its inference code would (transformers from_pretrained for native folders; the original
    LLaVA / LLaVA-NeXT builder sequence, delay_load included, for original ones) and check the loaded model:
    tower loaded or random, projector newly initialised, shapes vs config and tokenizer, NaN/Inf."""
    from ..api import inspect as run_inspect
    from ..core.builder import load_pretrained_model

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, kinds=("LiveModel",))
    loaded = load_pretrained_model(ckpt, device=device, dtype=dtype, require_tokenizer=False, model_base=model_base)
    report = run_inspect(
        loaded.model, stage=stage, tokenizer=loaded.tokenizer, select=settings.select, ignore=settings.ignore,
        severity=settings.severity, name=str(ckpt),
        # requires_grad of a model loaded for inference is the loader's, not a training run's
        options={"loaded_for_inference": True, "load_report": loaded.load_report},
    )
    if settings.format == "text" and output is None:
        click.echo("\n".join(summary_lines(report.stats["live"])))
    return emit(report, settings, output=output, exit_zero=exit_zero)
