"""`llava-doctor data DATA.json --tokenizer DIR --template NAME`: the tokenization audit."""
from __future__ import annotations

import sys

import click

from .common import emit, guarded, output_options, resolve_settings, show_progress

RECIPES = ("llava", "llava-1.5", "llava-next")

SHOW_HELP = ("Token/label view of samples: K (the first K samples a finding names), or sample ids and '#N' "
             "indices (0-based), comma-separated, e.g. --show 5, --show 000123,#0. 'id:5' is the sample whose id is 5.")


@click.command()
@click.argument("data", type=click.Path(exists=False, dir_okay=False))
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(exists=False),
              help="Local tokenizer directory (never downloaded), loaded the way the recipe's train.py loads it.")
@click.option("--template", default=None, help="Conversation template (LLaVA --version), e.g. v1, chatml_direct, qwen_2.")
@click.option("--recipe", type=click.Choice(RECIPES), default=None,
              help="Training code whose label arithmetic to model. Default: llava (LLaVA main branch).")
@click.option("--pad-token", default=None, help="The pad token your run really uses (e.g. the eos token); must be a "
                                                "token of the tokenizer.")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="model_max_length of the run.")
@click.option("--model-path", default=None, metavar="PATH",
              help="The run's --model_name_or_path when the tokenizer folder is named differently: the codebases "
                   "choose the tokenizer class by that name.")
@click.option("--mm-use-im-start-end", is_flag=True, help="The run sets --mm_use_im_start_end True.")
@click.option("--mm-use-im-patch-token", is_flag=True, help="The run sets --mm_use_im_patch_token True.")
@click.option("--show", default=None, metavar="K|IDS", help=SHOW_HELP)
@click.option("--suggest", is_flag=True, help="List the set-ups (recipe, template, pad token) that fit this tokenizer "
                                              "even when LD103 is silent.")
@click.option("--max-sample-chars", type=click.IntRange(min=1), default=None,
              help="Conversation text tokenized per sample at most (default 262144); larger samples are reported, "
                   "not tokenized.")
@click.option("--exact", is_flag=True, help="Tokenize every round on its own, as the training code does, instead of "
                                            "deriving the round lengths (slower; the default is proven equal).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, help="Worker processes.")
@output_options
@guarded
def data(data, tokenizer_dir, template, recipe, pad_token, max_length, model_path, mm_use_im_start_end,
         mm_use_im_patch_token, show, suggest, max_sample_chars, exact, jobs, select, ignore, fail_on, fmt, exit_zero,
         output) -> int:
    """Audit LLaVA conversations (JSON list or JSONL, streamed) for dropped samples and label drift (LD101-LD105)."""
    from ..api import apply_severity_overrides
    from ..artifacts.dataset import check_pad_token, iter_records, load_tokenizer
    from ..config import check_value
    from ..findings import InputError, Report
    from ..progress import progress_bar
    from ..templates.audit import audit_conversations
    from ..templates.view import summary_table

    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt,
                                template=check_value("template", template, where="--template") if template else None,
                                recipe=recipe, kinds=("Dataset",))
    template = settings.template
    if not template:
        raise InputError("no template: pass --template NAME (or set template in [tool.llava-doctor])")
    recipe = settings.recipe or "llava"
    spec = _show_spec(show)
    records = iter_records(data)
    first = next(records, None)  # an unreadable file fails here, before the tokenizer loads
    tokenizer = load_tokenizer(tokenizer_dir, recipe, model_path=model_path)
    check_pad_token(tokenizer, pad_token)
    bar = progress_bar(None, show_progress(settings), "auditing")

    def progress(n: int, seen=[0]) -> None:
        seen[0] += n
        if bar is not None:
            bar.set_description(f"auditing: {seen[0]:,} samples")

    def stream():
        if first is not None:
            yield first
        yield from records

    try:
        audited = audit_conversations(stream(), tokenizer, template, recipe=recipe, pad_token=pad_token,
                                      max_length=max_length, suggest=suggest, select=settings.select,
                                      ignore=settings.ignore, workers=jobs, name=str(data),
                                      mm_use_im_start_end=mm_use_im_start_end,
                                      mm_use_im_patch_token=mm_use_im_patch_token,
                                      max_sample_chars=max_sample_chars or 0, exact=exact, progress=progress,
                                      tokenizer_for=_loader(tokenizer_dir, model_path, recipe, tokenizer))
    finally:
        if bar is not None:
            bar.close()
    if audited.stats.get("data", {}).get("shard"):
        return 0  # a non-zero torchrun rank: rank 0 writes the merged report
    report = Report(artifacts=audited.artifacts, stats=audited.stats)
    report.extend(_loading_findings(recipe, model_path or str(tokenizer_dir), str(data), settings))
    report.extend(apply_severity_overrides(audited.findings, settings.severity))
    extra = []
    if settings.format == "text":
        if spec is not None:
            extra.append(_show(report, spec, data, tokenizer, template, recipe, pad_token, max_length,
                               mm_use_im_start_end, mm_use_im_patch_token, color=output is None and sys.stdout.isatty()))
        extra.append(summary_table(report.stats.get("data", {})))
    return emit(report, settings, output=output, exit_zero=exit_zero, epilogue="\n".join(e for e in extra if e))


def _loader(tokenizer_dir, model_path, recipe, tokenizer):
    """The tokenizer each recipe's train.py loads from the same folder (for the suggestions)."""
    from ..artifacts.dataset import load_tokenizer
    from ..templates.codebase import tokenizer_loading

    loaded = {recipe: tokenizer}

    def get(name: str):
        if name not in loaded:
            crash = tokenizer_loading(name, model_path or str(tokenizer_dir)).crash
            loaded[name] = load_tokenizer(tokenizer_dir, None if crash else name, model_path=model_path)
        return loaded[name]

    return get


def _loading_findings(recipe: str, model_path: str, name: str, settings) -> list:
    """LLaVA-NeXT's train.py loads no tokenizer at all for a model name none of its rules match."""
    from ..registry import all_checks, matches
    from ..templates.codebase import tokenizer_loading

    loading = tokenizer_loading(recipe, model_path)
    if loading.crash is None or not matches("LD101", settings.select) or matches("LD101", settings.ignore):
        return []
    return [all_checks()["LD101"]().finding(
        f"{loading.rule}: train.py raises `{loading.crash}` before reading any sample (the audit went on with "
        "AutoTokenizer's default class)", artifact=name, location=f"model path {model_path}", crash=loading.crash,
        recipe=recipe,
    )]


def _show_spec(show: str | None) -> tuple[int, list[str], list[int]] | None:
    """--show value -> (count of affected samples, ids, indices)."""
    if show is None:
        return None
    count, ids, indices = 0, [], []
    items = [item.strip() for item in show.split(",") if item.strip()]
    if len(items) == 1 and items[0].isdigit():
        return int(items[0]), [], []
    for item in items:
        if item.startswith("#") and item[1:].isdigit():
            indices.append(int(item[1:]))
        elif item.startswith("id:"):
            ids.append(item[3:])
        else:
            ids.append(item)
    return count, ids, indices


def _show(report, spec, data, tokenizer, template, recipe, pad_token, max_length, im_start_end, im_patch, *,
          color) -> str:
    from ..artifacts.dataset import build_dataset, iter_records
    from ..templates.audit import first_affected
    from ..templates.view import token_view

    count, ids, indices = spec
    wanted_ids = list(ids) + (first_affected(report, count) if count else [])
    if not wanted_ids and not indices:
        return "--show: no sample to show (no finding names a sample)" if count else ""
    wanted_indices = set(indices)
    picked: list = []
    found: set = set()
    for index, record in iter_records(data):  # a second streaming pass picks the samples out
        sid = str(record.get("id", index)) if isinstance(record, dict) else str(index)
        if index in wanted_indices or sid in wanted_ids:
            picked.append((index, record))
            found.add(sid)
            found.add(f"#{index}")
        if len(picked) >= len(wanted_ids) + len(wanted_indices) and all(i in found for i in wanted_ids):
            break
    missing = [i for i in wanted_ids if i not in found] + [f"#{i}" for i in indices if f"#{i}" not in found]
    dataset = build_dataset("show", picked, tokenizer, template, recipe=recipe, pad_token=pad_token,
                            max_length=max_length, mm_use_im_start_end=im_start_end, mm_use_im_patch_token=im_patch)
    views = [token_view(a, dataset.tokenizer, color=color) for a in dataset.analyses()]
    views += [f"sample {p.sample}: {p.message}" for p in dataset.problems]
    if missing:
        views.append(f"--show: no sample {', '.join(missing)} in {data}")
    return "\n\n".join(views)
