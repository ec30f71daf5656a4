"""`audit_conversations`: the LD10x tokenization audit as a Python API (for use inside training code).

Work is split three ways, all giving the same report:
- in one process, conversations are analysed in chunks (one batched tokenization per chunk);
- `workers=N` spreads the chunks over N processes (``multiprocessing``, fork where available);
- under ``torchrun`` (RANK / WORLD_SIZE set) each rank takes every WORLD_SIZE-th sample, the
  findings and counts are gathered with ``all_gather_object`` over gloo, and rank 0 gets the merged
  report (the other ranks get an empty one).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..findings import Finding, Report
from .suggest import TemplateFit

CHUNK = 2048
DATASET_LEVEL = ("LD103",)


@dataclass
class ShardResult:
    findings: list[Finding] = field(default_factory=list)
    fit: TemplateFit | None = None
    bad: int = 0
    oracle_supervised: int = 0
    problems: int = 0


def as_records(conversations: Sequence[Any]) -> list[Any]:
    """LLaVA records pass through; a bare list of turns becomes a record (image count = placeholders)."""
    out = []
    for k, item in enumerate(conversations):
        if isinstance(item, list):
            placeholders = sum(str(t.get("value", "")).count("<image>") for t in item if isinstance(t, dict)
                               and t.get("from") == "human")
            record: dict[str, Any] = {"id": str(k), "conversations": item}
            if placeholders:
                record["image"] = [f"image{j}" for j in range(placeholders)] if placeholders > 1 else "image"
            out.append(record)
        else:
            out.append(item)
    return out


def _shard(records: list[Any], tokenizer: Any, template: str, recipe: str, pad_token: str | None,
           max_length: int | None, select: Sequence[str], ignore: Sequence[str], name: str) -> ShardResult:
    from ..artifacts.dataset import build_dataset
    from ..registry import Context, run_checks
    from .suggest import summarize

    out = ShardResult()
    fits: list[TemplateFit] = []
    for start in range(0, len(records), CHUNK):
        chunk = records[start:start + CHUNK]
        dataset = build_dataset(name, chunk, tokenizer, template, recipe=recipe, pad_token=pad_token,
                                max_length=max_length)
        out.findings += run_checks(dataset, "Dataset", Context(), select=select,
                                   ignore=list(ignore) + list(DATASET_LEVEL))
        analyses = dataset.analyses()
        fits.append(summarize(template, analyses))
        out.bad += sum(1 for a in analyses if a.result.mismatch is not None or a.result.crash or a.drifts)
        out.oracle_supervised += sum(a.oracle.supervised for a in analyses if a.oracle is not None)
        out.problems += len(dataset.problems)
    out.fit = _add_fits(template, fits)
    return out


def _add_fits(template: str, fits: Iterable[TemplateFit | None]) -> TemplateFit:
    total = TemplateFit(template, 0, 0, 0, 0, 0, 0)
    for f in fits:
        if f is None:
            continue
        total = TemplateFit(template, total.samples + f.samples, total.dropped + f.dropped,
                            total.crashed + f.crashed, total.drifted + f.drifted, total.supervised + f.supervised,
                            total.unverified + f.unverified)
    return total


def _merge(parts: Iterable[ShardResult], template: str) -> ShardResult:
    merged = ShardResult()
    parts = list(parts)
    for part in parts:
        merged.findings += part.findings
        merged.bad += part.bad
        merged.oracle_supervised += part.oracle_supervised
        merged.problems += part.problems
    merged.fit = _add_fits(template, (p.fit for p in parts))
    return merged


_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer  # sent once per process, so its set-up copy is made once too


def _worker(args: tuple) -> ShardResult:
    return _shard(args[0], _WORKER_TOKENIZER, *args[1:])


def _distributed() -> tuple[int, int]:
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def audit_conversations(conversations: Sequence[Any], tokenizer: Any, template: str, *, recipe: str = "llava",
                        pad_token: str | None = None, max_length: int | None = None, suggest: bool = False,
                        select: Sequence[str] = ("ALL",), ignore: Sequence[str] = (), workers: int = 1,
                        name: str = "conversations", distributed: bool | None = None) -> Report:
    """Audit LLaVA-format conversations with a tokenizer object; returns a Report (LD101-LD105).

    `tokenizer` is the tokenizer as loaded (it is copied and set up the way the recipe's train.py
    does; `pad_token` states a different pad the run uses). `suggest=True` always lists the
    templates that fit; otherwise they are listed only when LD103 fires.
    """
    from ..registry import matches

    records = as_records(list(conversations))
    rank, world = _distributed()
    use_dist = (world > 1) if distributed is None else distributed
    common = (tokenizer, template, recipe, pad_token, max_length, tuple(select), tuple(ignore), name)
    if use_dist and world > 1:
        local = _shard(records[rank::world], *common)
        parts = _gather(local, world)
        if rank != 0:
            return Report(stats={"rank": rank, "data": {"shard": True}})
        merged = _merge(parts, template)
    elif workers > 1 and len(records) > CHUNK // 4:
        step = max(1, -(-len(records) // workers))
        jobs = [(records[k:k + step], *common[1:]) for k in range(0, len(records), step)]
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
            merged = _merge(pool.map(_worker, jobs), template)
    else:
        merged = _merge([_shard(records, *common)], template)

    report = Report()
    report.add_artifact(name)
    report.extend(merged.findings)
    fit = merged.fit
    summary = {
        "template": template, "recipe": recipe, "samples": fit.samples + merged.problems, "dropped": fit.dropped,
        "crashed": fit.crashed, "drifted": fit.drifted, "supervised_tokens": fit.supervised,
        "answer_tokens": merged.oracle_supervised, "unreadable": merged.problems,
    }
    wants_ld103 = matches("LD103", list(select) or ["ALL"]) and not matches("LD103", ignore)
    if wants_ld103 or suggest:
        report.extend(_template_fit(records, tokenizer, template, recipe, pad_token, max_length, fit, merged.bad,
                                    name, suggest, summary, emit=wants_ld103))
    report.stats["data"] = summary
    return report


def _template_fit(records, tokenizer, template, recipe, pad_token, max_length, fit, bad, name, suggest, summary,
                  *, emit: bool) -> list[Finding]:
    from ..artifacts.dataset import parse_records
    from ..registry import all_checks
    from .suggest import fit_message, fitting_templates

    samples, _ = parse_records(records[:256])
    threshold = 0.5
    fires = fit.samples > 0 and bad >= threshold * fit.samples
    if not (fires or suggest):
        return []
    fits = fitting_templates(samples, tokenizer, recipe, pad_token=pad_token, max_length=max_length)
    summary["templates_that_fit"] = [f.template for f in fits if f.clean]
    summary["template_fits"] = {f.template: {"dropped": f.dropped, "crashed": f.crashed, "drifted": f.drifted,
                                             "samples": f.samples} for f in fits}
    if not (fires and emit):
        return []
    check = all_checks()["LD103"]()
    good = [f.template for f in fits if f.clean and f.template != template]
    return [check.finding(
        fit_message(template, recipe, bad, fit, good),
        artifact=name, location=f"template {template}", observed=bad, expected=0, template=template, recipe=recipe,
        suggestions=good, dropped=fit.dropped, crashed=fit.crashed, drifted=fit.drifted, samples=fit.samples,
    )]


def _gather(local: ShardResult, world: int) -> list[ShardResult]:
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="env://")
        created = True
    try:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, local)
        return parts
    finally:
        if created:
            dist.destroy_process_group()
