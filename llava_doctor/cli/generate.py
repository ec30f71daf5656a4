"""`llava-doctor generate CKPT --image IMG`: answer greedily and diagnose the answer (LD501-LD504, and its cause)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import click

from ..progress import progress_allowed, progress_bar
from .common import emit, guarded, output_options, resolve_settings


def step_ranges(steps: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    parts, start = [], None
    for index, step in enumerate(steps):
        start = step if start is None else start
        if index + 1 == len(steps) or steps[index + 1] != step + 1:
            parts.append(f"{start}-{step}" if step > start else str(step))
            start = None
    return ", ".join(parts)


def sample_lines(generation: dict) -> list[str]:
    """Per image and prompt: the answer and its ids, the logits' health, and the neutral images' answers."""
    lines = []
    for sample in generation["samples"]:
        ids = " ".join(map(str, sample["token_ids"]))
        lines.append(f"{sample['image']} / {sample['prompt']!r} ({generation['dtype']}, {len(sample['token_ids'])} tokens): "
                     f"{sample['text']!r}  ids: {ids}")
        steps = sample["steps"]
        bad = [i for i, step in enumerate(steps, start=1) if not step["finite"]]
        largest = max((s["max_abs"] for s in steps if s["max_abs"] is not None and s["finite"]), default=None)
        health = f"non-finite at step{'s' if len(bad) > 1 else ''} {step_ranges(bad)}" if bad else "finite at every step"
        lines.append(f"  logits: {health} ({len(steps) - len(bad)} of {len(steps)} steps finite"
                     + (f", max |logit| {largest:.4g})" if largest is not None else ")"))
        for answer in sample["neutral"]:
            verdict = "the same answer" if answer["same_output"] else f"a different answer {answer['text']!r}"
            tv = "" if answer["first_step_tv"] is None else \
                f"; next-token total variation {answer['first_step_tv']:.3g} at step 1, up to {answer['max_tv']:.3g}"
            lines.append(f"  {answer['image']} image: {verdict}{tv}")
    if generation.get("likely_cause"):
        lines.append(f"most likely cause: {generation['likely_cause']}")
    for note in generation.get("notes") or []:
        lines.append(f"note: {note}")
    return lines


@contextlib.contextmanager
def _step(description: str, fmt: str) -> Iterator[None]:
    """An elapsed-time line on a terminal while a long step runs (llava_doctor.progress); nothing otherwise."""
    bar = progress_bar(None, progress_allowed(fmt), description, ticking=True)
    try:
        yield
    finally:
        if bar is not None:
            bar.close()


def _thresholds(**values) -> dict:
    return {name: value for name, value in values.items() if value is not None}


@click.command()
@click.argument("ckpt", type=click.Path(exists=False))
@click.option("--image", "images", required=True, multiple=True, type=click.Path(exists=False),
              help="An image to ask about (JPEG, PNG or WebP); repeat for several.")
@click.option("--prompt", "prompts", multiple=True, help="The question; repeat for several. Default: 'Describe the image.'")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Run in this dtype. Default: the config's dtype/torch_dtype (float32 if none).")
@click.option("--conv-mode", default=None, metavar="NAME",
              help="Original LLaVA: the conversation template (default: inferred from the model name as run_llava.py does).")
@click.option("--model-base", type=click.Path(exists=False), default=None,
              help="The language model a projector-only checkpoint (mm_projector.bin) goes on, as LLaVA's --model-base.")
@click.option("--tokenizer", type=click.Path(exists=False), default=None,
              help="A tokenizer folder, for a checkpoint that has none.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True, metavar="N")
@click.option("--no-neutral", is_flag=True, help="Skip the blank/noise-image comparison (LD504).")
@click.option("--max-run", type=click.IntRange(min=2), default=None, help="LD501: one token this many times in a row (8).")
@click.option("--loop-repeats", type=click.IntRange(min=2), default=None, help="LD501: an n-gram repeated this many times in a row (4).")
@click.option("--max-seq-rep", type=click.FloatRange(0, 1), default=None, help="LD501: seq-rep-4 at or above this (0.5).")
@click.option("--min-distinct", type=click.FloatRange(0, 1), default=None, help="LD501: distinct-2 at or below this (0.3).")
@click.option("--min-tokens", type=click.IntRange(min=1), default=None, help="LD501: judge seq-rep/distinct from this many tokens (16).")
@click.option("--image-max-tv", type=click.FloatRange(0, 1), default=None, help="LD504: next-token distributions this close count as the same (0.05).")
@click.option("--image-constant", type=click.FloatRange(min=0), default=None, help="LD504: a relative change this small is a constant output (1e-3).")
@click.option("--image-near-zero", type=click.FloatRange(min=0), default=None, help="LD504: projector RMS below this fraction of the text embeddings' is near zero (0.01).")
@output_options
@guarded
def generate(ckpt, images, prompts, device, dtype, conv_mode, model_base, tokenizer, max_new_tokens, no_neutral, max_run,
             loop_repeats, max_seq_rep, min_distinct, min_tokens, image_max_tv, image_constant, image_near_zero,
             select, ignore, fail_on, fmt, exit_zero, output) -> int:
    """Load CKPT the way its inference code does (transformers Llava / LlavaNext / LlavaOnevision, or original
    LLaVA / LLaVA-NeXT), answer each PROMPT about each IMAGE greedily with forward hooks watching, compare with
    a blank and a noise image, and report degenerate repetition (LD501), NaN token-0 runs (LD502), the first
    non-finite module (LD503), an answer independent of the image (LD504), and the most likely cause."""
    from ..api import check_generation
    from ..artifacts.generation import DEFAULT_PROMPT, as_image, run_generation
    from ..core.builder import load_pretrained_model

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, kinds=("Generation",))
    pictures = [as_image(index, path) for index, path in enumerate(images)]  # bounded reads before any weights
    prompts = list(prompts) or [DEFAULT_PROMPT]
    with _step(f"loading {ckpt}", settings.format):
        loaded = load_pretrained_model(ckpt, device=device, dtype=dtype, conv_mode=conv_mode, model_base=model_base,
                                       tokenizer=tokenizer)
    with _step(f"generating {len(pictures) * len(prompts)} answer(s)", settings.format):
        generation = run_generation(loaded.model, loaded.tokenizer, loaded.inputs_builder(), images=pictures,
                                    prompts=prompts, max_new_tokens=max_new_tokens, neutral=not no_neutral,
                                    name=str(ckpt), family=loaded.family, notes=loaded.load_report["notes"])
    options = _thresholds(max_run=max_run, loop_repeats=loop_repeats, max_seq_rep=max_seq_rep, min_distinct=min_distinct,
                          min_tokens=min_tokens, image_max_tv=image_max_tv, image_constant=image_constant,
                          image_near_zero=image_near_zero)
    report = check_generation(loaded.model, generation=generation, select=settings.select, ignore=settings.ignore,
                              severity=settings.severity, options=options,
                              live_options={"loaded_for_inference": True, "load_report": loaded.load_report})
    # the generated ids and text, per-step logit health and the neutral-image answers: before the findings in text,
    # under "stats": {"generation": ...} in JSON
    return emit(report, settings, output=output, exit_zero=exit_zero,
                prologue="\n".join(sample_lines(report.stats["generation"])))
