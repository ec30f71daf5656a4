"""`audit_conversations`: the LD10x tokenization audit as a Python API (for use inside training code).

The records stream through in chunks (one batched tokenization per chunk, bounded memory); every
per-sample finding is folded into one finding per cause (`grouping`) and dropped, so a 665k-sample
dataset gives a report, not 665k paragraphs, while the JSON keeps every affected sample as a row.
Work is split three ways, all giving the same report:
- in one process, chunk after chunk;
- `workers=N` spreads the chunks over N processes (``multiprocessing``, fork where available);
- under ``torchrun`` (RANK / WORLD_SIZE set) each rank takes every WORLD_SIZE-th sample, the
  partial results are gathered with ``all_gather_object`` over gloo, and rank 0 gets the merged
  report (the other ranks get an empty one).
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..findings import Finding, InputError, Report, Severity
from .grouping import FindingGroups
from .suggest import TemplateFit

CHUNK = 2048  # samples per batched tokenization
WORKER_CHUNK = 256  # ... per task of a worker process (small: the workers finish together)
CHUNK_CHARS = 4_000_000  # ... or fewer, when the samples are long (bounds the memory of one chunk)
HEAD = 256  # records kept for LD103's suggestions
DATASET_LEVEL = ("LD103",)


@dataclass(frozen=True)
class AuditOptions:
    template: str
    recipe: str = "llava"
    pad_token: str | None = None
    max_length: int | None = None
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    max_sample_chars: int = 0  # 0: MAX_SAMPLE_CHARS
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    name: str = "conversations"
    exact: bool = False  # tokenize every round on its own instead of deriving the lengths


@dataclass
class ShardResult:
    groups: FindingGroups = field(default_factory=FindingGroups)
    fit: TemplateFit | None = None
    bad: int = 0  # well-formed samples dropped, crashed or drifted (what LD103 weighs)
    oracle_supervised: int = 0
    problems: int = 0
    too_large: int = 0
    truncated: int = 0  # samples whose every supervised token lies beyond model_max_length (LD104)
    checked: int = 0  # samples the verifier ran on both paths
    disproved: str | None = None
    derived: bool = True
    head: list[tuple[int, Any]] = field(default_factory=list)


def as_records(conversations: Iterable[Any]) -> Iterator[Any]:
    """LLaVA records pass through; a bare list of turns becomes a record (image count = placeholders)."""
    for k, item in enumerate(conversations):
        if isinstance(item, list):
            placeholders = sum(str(t.get("value", "")).count("<image>") for t in item if isinstance(t, dict)
                               and t.get("from") == "human")
            record: dict[str, Any] = {"id": str(k), "conversations": item}
            if placeholders:
                record["image"] = [f"image{j}" for j in range(placeholders)] if placeholders > 1 else "image"
            yield record
        else:
            yield item


def _indexed(records: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    for k, item in enumerate(records):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int):
            yield item
        else:
            yield k, item


def _size(record: Any) -> int:
    if isinstance(record, dict):
        turns = record.get("conversations")
        if isinstance(turns, list):
            return sum(len(t.get("value", "")) for t in turns if isinstance(t, dict) and isinstance(t.get("value"), str))
    return 1


def chunks(pairs: Iterable[tuple[int, Any]], size: int = CHUNK, chars: int = CHUNK_CHARS) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    budget = 0
    for pair in pairs:
        chunk.append(pair)
        budget += _size(pair[1])
        if len(chunk) >= size or budget >= chars:
            yield chunk
            chunk, budget = [], 0
    if chunk:
        yield chunk


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Automatic garbage collection off while chunks are audited: the millions of short-lived lists of
    a chunk would trigger collections that walk every long-lived object (a 150k-entry vocabulary,
    transformers' modules) again and again - a third of the audit's time. What the audit allocates
    is freed by reference counting; one young-generation collection per chunk (`_Auditor.add`)
    catches any cycle a library makes."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Auditor:
    """One process's share of the audit: chunks in, folded groups and counts out."""

    def __init__(self, tokenizer: Any, options: AuditOptions, share: int = 1, keep_head: bool = True) -> None:
        from .tokenize import Encoder, Verifier

        self.tokenizer = tokenizer
        self.options = options
        self.keep_head = keep_head  # worker processes leave the head to the parent, which reads every chunk
        self.encoders: dict[int, Encoder] = {}
        self.verifier = Verifier(first=max(32, Verifier.first // share))  # the first samples, split over the workers
        self.threads = 1 if share > 1 else None  # worker processes are the parallelism: no threads inside them
        self.out = ShardResult()
        self.fits: list[TemplateFit] = []
        self.derive = not options.exact
        self.Encoder = Encoder

    def add(self, chunk: list[tuple[int, Any]]) -> None:
        from ..artifacts.dataset import build_dataset
        from ..registry import Context, run_checks
        from .suggest import summarize

        o = self.options
        if self.keep_head:
            _extend_head(self.out.head, chunk)
        dataset = build_dataset(o.name, chunk, self.tokenizer, o.template, recipe=o.recipe, pad_token=o.pad_token,
                                max_length=o.max_length, mm_use_im_start_end=o.mm_use_im_start_end,
                                mm_use_im_patch_token=o.mm_use_im_patch_token, max_sample_chars=o.max_sample_chars)
        key = id(getattr(dataset.tokenizer, "base", dataset.tokenizer))
        encode = self.encoders.get(key)
        if encode is None:
            encode = self.encoders[key] = self.Encoder(dataset.tokenizer, derive=self.derive, threads=self.threads)
        else:
            encode = encode.with_tokenizer(dataset.tokenizer)
        dataset.encoder, dataset.verifier = encode, (self.verifier if self.derive else None)
        self.out.groups.add(run_checks(dataset, "Dataset", Context(), select=list(o.select),
                                       ignore=list(o.ignore) + list(DATASET_LEVEL)))
        analyses = dataset.analyses()
        self.fits.append(summarize(o.template, analyses, recipe=o.recipe, pad_token=o.pad_token))
        self.out.bad += sum(1 for a in analyses if a.bad and not a.problem)
        self.out.oracle_supervised += sum(a.oracle.supervised for a in analyses if a.oracle is not None)
        self.out.truncated += sum(1 for a in analyses if a.truncated and a.result.supervised > 0
                                  and a.supervised_after_truncation == 0)
        self.out.problems += sum(1 for p in dataset.problems if p.kind != "too large")
        self.out.too_large += sum(1 for p in dataset.problems if p.kind == "too large")
        encode.forget()
        del dataset, analyses
        gc.collect(1)

    def result(self) -> ShardResult:
        self.out.fit = _add_fits(self.options, self.fits)
        self.out.checked = self.verifier.checked
        self.out.disproved = self.verifier.disproved
        self.out.derived = self.derive and self.verifier.disproved is None
        return self.out


def _add_fits(options: AuditOptions, fits: Iterable[TemplateFit | None]) -> TemplateFit:
    total = TemplateFit(options.template, 0, 0, 0, 0, 0, 0, 0, options.recipe, options.pad_token)
    for f in fits:
        if f is None:
            continue
        total = replace(total, samples=total.samples + f.samples, dropped=total.dropped + f.dropped,
                        crashed=total.crashed + f.crashed, drifted=total.drifted + f.drifted,
                        supervised=total.supervised + f.supervised, unverified=total.unverified + f.unverified,
                        malformed=total.malformed + f.malformed)
    return total


def _merge(parts: Iterable[ShardResult], options: AuditOptions) -> ShardResult:
    merged = ShardResult()
    parts = list(parts)
    for part in parts:
        merged.groups.merge(part.groups)
        merged.bad += part.bad
        merged.oracle_supervised += part.oracle_supervised
        merged.problems += part.problems
        merged.too_large += part.too_large
        merged.truncated += part.truncated
        merged.checked += part.checked
        merged.disproved = merged.disproved or part.disproved
        merged.derived = merged.derived and part.derived
        merged.head = sorted(merged.head + part.head, key=lambda pair: pair[0])[:HEAD]
    merged.fit = _add_fits(options, (p.fit for p in parts))
    return merged


def _extend_head(head: list[tuple[int, Any]], chunk: list[tuple[int, Any]]) -> None:
    if len(head) < HEAD:
        head.extend(chunk[:HEAD - len(head)])


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, options: AuditOptions, workers: int) -> None:
    gc.disable()  # a worker only audits chunks: `_Auditor.add` collects the young generation after each
    _WORKER["auditor"] = _Auditor(tokenizer, options, workers, keep_head=False)  # the tokenizer crosses once per process


def _worker(chunk: list[tuple[int, Any]]) -> ShardResult:
    auditor = _WORKER["auditor"]
    auditor.out = ShardResult()
    auditor.fits = []
    with _collector_paused():
        auditor.add(chunk)
    return auditor.result()


def _in_workers(stream: Iterator[list[tuple[int, Any]]], tokenizer: Any, options: AuditOptions,
                workers: int) -> ShardResult:
    """The chunks spread over `workers` processes; this one reads the stream, keeps the head and merges."""
    import multiprocessing as mp

    from .tokenize import Encoder

    # the tokenizer's unit-locality proof is cached per backend (_LOCALITY): made once here, forked workers
    # inherit it; each worker still builds its own Encoder
    Encoder(tokenizer).facts
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    head: list[tuple[int, Any]] = []

    def heads_kept() -> Iterator[list[tuple[int, Any]]]:
        for chunk in stream:
            _extend_head(head, chunk)
            yield chunk

    # Frozen, the objects this process holds (tokenizer, modules) stay out of the workers' garbage
    # collections: no walk over them, and no copy-on-write of their pages in each forked worker.
    gc.freeze()
    try:
        with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(tokenizer, options, workers)) as pool:
            merged = _merge(pool.imap(_worker, heads_kept()), options)
    finally:
        gc.unfreeze()
    merged.head = head
    return merged


def _distributed() -> tuple[int, int]:
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def audit_conversations(conversations: Iterable[Any], tokenizer: Any, template: str, *, recipe: str = "llava",
                        pad_token: str | None = None, max_length: int | None = None, suggest: bool = False,
                        select: Sequence[str] = ("ALL",), ignore: Sequence[str] = (), workers: int = 1,
                        name: str = "conversations", distributed: bool | None = None,
                        mm_use_im_start_end: bool = False, mm_use_im_patch_token: bool = False,
                        max_sample_chars: int = 0, exact: bool = False,
                        progress: Callable[[int], None] | None = None,
                        tokenizer_for: Callable[[str], Any] | None = None) -> Report:
    """Audit LLaVA-format conversations with a tokenizer object; returns a Report (LD101-LD105).

    `conversations` is any iterable of records (or bare turn lists, or ``(index, record)`` pairs from
    `artifacts.dataset.iter_records`): it is consumed chunk by chunk. `tokenizer` is the tokenizer as
    loaded (the recipe's train.py set-up is applied to a view of it; it is never modified);
    `pad_token` states a different pad the run uses; `mm_use_im_start_end` / `mm_use_im_patch_token`
    are the run's flags of those names. `suggest=True` always lists the set-ups that fit; otherwise
    they are listed only when LD103 fires; `tokenizer_for(recipe)` gives the tokenizer another
    recipe's train.py would load, for those suggestions. `exact=True` tokenizes every round on its
    own (the training code's way) instead of deriving the lengths; `progress(n)` is called after
    each chunk.
    """
    from ..registry import matches
    from .codebase import CODEBASES

    if recipe not in CODEBASES:
        raise InputError(f"unknown recipe {recipe!r}; known: {', '.join(CODEBASES)}")
    options = AuditOptions(template, recipe, pad_token, max_length, mm_use_im_start_end, mm_use_im_patch_token,
                           max_sample_chars, tuple(select), tuple(ignore), name, exact)
    pairs = _indexed(as_records(conversations))
    rank, world = _distributed()
    use_dist = (world > 1) if distributed is None else distributed

    def counted(stream: Iterator[list[tuple[int, Any]]]) -> Iterator[list[tuple[int, Any]]]:
        for chunk in stream:
            yield chunk
            if progress is not None:
                progress(len(chunk))

    if use_dist and world > 1:
        auditor = _Auditor(tokenizer, options)
        with _collector_paused():
            for chunk in counted(chunks(pair for pair in pairs if pair[0] % world == rank)):
                auditor.add(chunk)
        parts = _gather(auditor.result(), world)
        if rank != 0:
            return Report(stats={"rank": rank, "data": {"shard": True}})
        merged = _merge(parts, options)
    elif workers > 1:
        merged = _in_workers(counted(chunks(pairs, size=WORKER_CHUNK)), tokenizer, options, workers)
    else:
        auditor = _Auditor(tokenizer, options)
        with _collector_paused():
            for chunk in counted(chunks(pairs)):
                auditor.add(chunk)
        merged = _merge([auditor.result()], options)
    return _report(merged, tokenizer, options, suggest=suggest, tokenizer_for=tokenizer_for,
                   wants_ld103=matches("LD103", list(select) or ["ALL"]) and not matches("LD103", ignore))


def _report(merged: ShardResult, tokenizer: Any, options: AuditOptions, *, suggest: bool, wants_ld103: bool,
            tokenizer_for: Callable[[str], Any] | None = None) -> Report:
    report = Report()
    report.add_artifact(options.name)
    fit = merged.fit
    summary: dict[str, Any] = {
        "template": options.template, "recipe": options.recipe, "samples": fit.samples + merged.problems + merged.too_large,
        "dropped": fit.dropped, "crashed": fit.crashed, "drifted": fit.drifted, "unverified": fit.unverified,
        "malformed": fit.malformed, "supervised_tokens": fit.supervised, "answer_tokens": merged.oracle_supervised,
        "truncated": merged.truncated, "unreadable": merged.problems, "not_audited": merged.too_large,
        "lengths": "derived" if merged.derived else "exact",
        "verified_samples": merged.checked,
    }
    from .codebase import choose_template

    choice = choose_template(options.recipe, options.template)
    summary["template_used"] = choice.template.name
    if choice.note:
        summary["template_note"] = choice.note
    if merged.disproved:
        summary["derivation_disproved"] = merged.disproved
    report.extend(merged.groups.findings())
    if wants_ld103:
        report.extend(_template_choice(options))
    if wants_ld103 or suggest:
        report.extend(_template_fit(merged, tokenizer, options, suggest, summary, emit=wants_ld103,
                                    tokenizer_for=tokenizer_for))
    report.stats["data"] = summary
    return report


def _ld103():
    from ..registry import all_checks

    return all_checks()["LD103"]()


def _template_choice(options: AuditOptions) -> list[Finding]:
    """Once per run: the template the codebase really trains with when it is not the one named."""
    from .codebase import choose_template

    choice = choose_template(options.recipe, options.template)
    if not choice.silent_fallback:
        return []
    return [_ld103().finding(
        f"--version {options.template}: {choice.note}", artifact=options.name,
        location=f"template {options.template}", severity=Severity.WARNING, observed=choice.template.name,
        expected=options.template, template=options.template, used=choice.template.name, recipe=options.recipe,
    )]


def _template_fit(merged: ShardResult, tokenizer: Any, options: AuditOptions, suggest: bool, summary: dict,
                  *, emit: bool, tokenizer_for: Callable[[str], Any] | None = None) -> list[Finding]:
    from ..artifacts.dataset import parse_records
    from .suggest import UNVERIFIED_HELP, fit_message, fitting_setups, ranked_options

    fit = merged.fit
    sound = fit.samples - fit.malformed
    fires = sound > 0 and merged.bad >= 0.5 * sound
    if not (fires or suggest):
        return []
    samples, _ = parse_records(merged.head, max_sample_chars=options.max_sample_chars)
    samples = [s for s in samples if not _malformed(s)] or samples
    fits = fitting_setups(samples, tokenizer, options.recipe, pad_token=options.pad_token,
                          max_length=options.max_length, tokenizer_for=tokenizer_for, everywhere=suggest)
    good = ranked_options(fits, options.recipe, options.pad_token, options.template)
    summary["templates_that_fit"] = sorted({f.template for f in fits if f.clean and f.recipe == options.recipe
                                            and f.pad_token == options.pad_token})
    summary["setups_that_fit"] = good
    summary["template_fits"] = [
        {"recipe": f.recipe, "template": f.template, "pad_token": f.pad_token, "samples": f.samples,
         "dropped": f.dropped, "crashed": f.crashed, "drifted": f.drifted, "unverified": f.unverified,
         "fits": f.clean} for f in fits]
    summary["unverified_means"] = UNVERIFIED_HELP
    if not (fires and emit):
        return []
    return [_ld103().finding(
        fit_message(options.template, options.recipe, merged.bad, fit, good),
        artifact=options.name, location=f"template {options.template}", observed=merged.bad, expected=0,
        template=options.template, recipe=options.recipe, suggestions=good, dropped=fit.dropped, crashed=fit.crashed,
        drifted=fit.drifted, samples=fit.samples, malformed=fit.malformed,
    )]


def _malformed(sample: Any) -> bool:
    from .analysis import conversation_problem

    return conversation_problem(sample.conversation) is not None


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


def first_affected(report: Report, k: int) -> list[str]:
    """Ids of the first k samples some LD101-LD105 finding names (in file order)."""
    rows = []
    for f in report.findings:
        records = f.extra.get("records") if isinstance(f.extra, dict) else None
        if records:
            rows += [(row[1] if isinstance(row[1], int) else -1, str(row[0])) for row in records["rows"]]
        elif f.extra.get("sample") is not None:
            rows.append((f.extra.get("index", -1) if isinstance(f.extra.get("index"), int) else -1, str(f.extra["sample"])))
    out: list[str] = []
    for _, sid in sorted(rows):
        if sid not in out:
            out.append(sid)
        if len(out) >= k:
            break
    return out
