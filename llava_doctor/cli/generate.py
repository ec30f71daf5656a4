"""`llava-doctor generate CKPT --image IMG`: answer greedily and diagnose the run (LD502, LD503)."""
from __future__ import annotations

import click

from .common import emit, guarded, output_options, resolve_settings


def generated_line(generation) -> str:
    ids = " ".join(map(str, generation.token_ids))
    return f"generated ({generation.dtype}, {len(generation.token_ids)} tokens): {generation.text!r}  ids: {ids}"


@click.command()
@click.argument("ckpt", type=click.Path(exists=False))
@click.option("--image", required=True, type=click.Path(exists=False), help="A PNG image to ask about.")
@click.option("--prompt", default=None, help="The question. Default: the core's describe prompt.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=16, show_default=True, metavar="N")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Run in this dtype. Default: the config's torch_dtype/dtype (float32 if none).")
@output_options
@guarded
def generate(ckpt, image, prompt, max_new_tokens, dtype, select, ignore, fail_on, fmt, exit_zero, output) -> int:
    """Load a checkpoint of the bundled core's architectures (llava_llama, llava_qwen), answer PROMPT about
    IMAGE greedily with every module hooked, and report NaN logits, token-0 runs and the first module
    whose output went non-finite."""
    from ..api import check_generation
    from ..artifacts.generation import run_generation
    from ..core.data import DESCRIBE_PROMPT

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt)
    generation = run_generation(ckpt, image, prompt=prompt or DESCRIBE_PROMPT, max_new_tokens=max_new_tokens,
                                dtype=dtype)
    report = check_generation(generation, select=settings.select, ignore=settings.ignore, severity=settings.severity)
    if settings.format == "text":
        click.echo(generated_line(generation))
    return emit(report, settings, output=output, exit_zero=exit_zero)
