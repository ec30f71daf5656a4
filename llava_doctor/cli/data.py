"""`llava-doctor data DATA.json --tokenizer DIR --template NAME`: the tokenization audit."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import emit, guarded, output_options, resolve_settings

RECIPES = ("llava", "llava-1.5", "llava-next")
SAMPLE_CODES = ("LD101", "LD102", "LD104")


@click.command()
@click.argument("data", type=click.Path(exists=False, dir_okay=False))
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(exists=False),
              help="Local tokenizer directory (never downloaded).")
@click.option("--template", default=None, help="Conversation template (LLaVA --version), e.g. v1, chatml_direct, qwen_2.")
@click.option("--recipe", type=click.Choice(RECIPES), default=None,
              help="Training code whose label arithmetic to model. Default: llava (LLaVA main branch).")
@click.option("--pad-token", default=None, help="The pad token your run really uses (e.g. the eos token).")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="model_max_length of the run.")
@click.option("--show", type=click.IntRange(min=0), default=0, metavar="K", help="Print the token/label view of K bad samples.")
@click.option("--suggest", is_flag=True, help="List the templates that fit this tokenizer even when LD103 is silent.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, help="Worker processes.")
@output_options
@guarded
def data(data, tokenizer_dir, template, recipe, pad_token, max_length, show, suggest, jobs, select, ignore, fail_on,
         fmt, exit_zero, output) -> int:
    """Audit LLaVA conversations (JSON list or JSONL) for dropped samples and label drift (LD101-LD105)."""
    from ..api import apply_severity_overrides
    from ..artifacts.dataset import load_tokenizer, read_records
    from ..findings import InputError, Report
    from ..templates.audit import audit_conversations
    from ..templates.conversation import TEMPLATES
    from ..templates.view import summary_table

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, template=template,
                                recipe=recipe)
    template = settings.template
    if not template:
        raise InputError("no template: pass --template NAME (or set template in [tool.llava-doctor])")
    recipe = settings.recipe or "llava"
    if recipe not in RECIPES:
        raise InputError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; known: {', '.join(sorted(TEMPLATES))}")
    records = read_records(data)
    if not isinstance(records, list):
        raise InputError(f"{data}: top-level JSON is a {type(records).__name__}, not a list of conversations")
    tokenizer = load_tokenizer(tokenizer_dir)
    audited = audit_conversations(records, tokenizer, template, recipe=recipe, pad_token=pad_token,
                                  max_length=max_length, suggest=suggest, select=settings.select,
                                  ignore=settings.ignore, workers=jobs, name=str(data))
    if audited.stats.get("data", {}).get("shard"):
        return 0  # a non-zero torchrun rank: rank 0 writes the merged report
    report = Report(artifacts=audited.artifacts, stats=audited.stats)
    report.extend(apply_severity_overrides(audited.findings, settings.severity))
    code = emit(report, settings, output=output, exit_zero=exit_zero)
    if settings.format == "text":
        extra = []
        if show:
            extra.append(_show(report, records, tokenizer, template, recipe, pad_token, max_length, show,
                               color=output is None and sys.stdout.isatty()))
        extra.append(summary_table(report.stats.get("data", {})))
        text = "\n".join(e for e in extra if e)
        if output:
            with Path(output).open("a", encoding="utf-8") as fh:
                fh.write(text + "\n")
        else:
            click.echo(text)
    return code


def _show(report, records, tokenizer, template, recipe, pad_token, max_length, k, *, color) -> str:
    from ..artifacts.dataset import build_dataset
    from ..templates.view import token_view

    wanted = []
    for finding in report.findings:
        sample = finding.extra.get("sample")
        if finding.code in SAMPLE_CODES and sample is not None and sample not in wanted:
            wanted.append(str(sample))
        if len(wanted) >= k:
            break
    if not wanted:
        return ""
    picked = [r for i, r in enumerate(records) if isinstance(r, dict) and str(r.get("id", i)) in wanted]
    dataset = build_dataset("show", picked, tokenizer, template, recipe=recipe, pad_token=pad_token,
                            max_length=max_length)
    return "\n\n".join(token_view(a, dataset.tokenizer, color=color) for a in dataset.analyses()[:k])
