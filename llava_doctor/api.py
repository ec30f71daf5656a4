"""The Python API: the same power as the CLI, returning a Report.

    >>> report = llava_doctor.audit(["out/checkpoint"], stage="pretrain")
    >>> [f.code for f in report.findings]
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from .findings import Finding, Report, Severity
from .registry import Context, run_checks


def apply_severity_overrides(findings: Iterable[Finding], overrides: Mapping[str, Severity] | None) -> list[Finding]:
    if not overrides:
        return list(findings)
    return [replace(f, severity=overrides[f.code]) if f.code in overrides else f for f in findings]


def _check_into(report: Report, artifact, name: str, kind: str, context: Context, *, select: Iterable[str],
                ignore: Iterable[str], severity: Mapping[str, Severity] | None) -> None:
    """Run the checks of `kind` on one artifact and add what they find to `report`."""
    report.add_artifact(name)
    findings = run_checks(artifact, kind, context, select=tuple(select), ignore=tuple(ignore))
    report.extend(apply_severity_overrides(findings, severity))


def audit(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    deep: bool = False,
    stage: str | None = None,
    base: str | os.PathLike | None = None,
    schema: bool = True,
    progress: bool = False,
    severity: Mapping[str, Severity] | None = None,
) -> Report:
    """Audit one or more checkpoints (files or directories).

    A path that cannot be read is recorded in ``Report.input_errors`` (exit code 2) and the others
    are still audited; an HF Trainer ``output_dir`` is audited as its final weights and its latest
    ``checkpoint-N`` (``readers.audit_targets``). ``base`` implies ``deep``: a comparison reads
    tensor data. An unreadable ``base`` raises InputError (nothing can be compared).
    """
    from .artifacts.readers import audit_targets, open_checkpoint
    from .findings import InputError

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    select, ignore = tuple(select), tuple(ignore)
    base_checkpoint = open_checkpoint(base) if base is not None else None
    deep = deep or base_checkpoint is not None
    context = Context(deep=deep, stage=stage, base=base_checkpoint, options={"schema": schema, "progress": progress})
    report = Report()
    for path in paths:
        for target in audit_targets(path):
            try:
                checkpoint = open_checkpoint(target)
            except InputError as exc:
                report.add_input_error(os.fspath(target), str(exc))
                continue
            _check_into(report, checkpoint, checkpoint.name, "Checkpoint", context, select=select, ignore=ignore,
                        severity=severity)
            report.stats.setdefault("checkpoints", []).append(
                {
                    "artifact": checkpoint.name,
                    "format": checkpoint.format,
                    "layout": checkpoint.layout,
                    "tensors": len(checkpoint.tensors),
                    "components": {c: len(ts) for c, ts in checkpoint.by_component().items() if ts},
                }
            )
            if base_checkpoint is not None:
                _add_comparison_stats(report, checkpoint, base_checkpoint)
    return report


def _add_comparison_stats(report: Report, checkpoint, base) -> None:
    """What the --base comparison covered, per component, when a selected check computed it."""
    from .compare import computed_comparison

    comparison = computed_comparison(checkpoint, base)
    if comparison is not None:
        report.stats.setdefault("comparisons", []).append(
            {"artifact": checkpoint.name, "base": base.name, "components": comparison.coverage_table()}
        )


def check_logs(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    min_run: int = 3,
    severity: Mapping[str, Severity] | None = None,
) -> Report:
    """Check training logs (trainer_state.json, run dirs, JSONL, text logs). A single unreadable input raises
    InputError; one among several is recorded in `report.input_errors` and the others are checked."""
    from .artifacts.training_log import read_training_log
    from .findings import InputError

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    context = Context(options={"min_run": min_run})
    report = Report()
    for path in paths:
        try:
            log = read_training_log(path)
        except InputError as exc:
            if len(paths) == 1:
                raise
            report.add_input_error(os.fspath(path), str(exc))
            continue
        _check_into(report, log, log.name, "TrainingLog", context, select=select, ignore=ignore, severity=severity)
        report.stats.setdefault("logs", []).append(
            {"artifact": log.name, "format": log.source, "train_steps": len(log.steps), "evals": len(log.evals),
             "first_step": log.steps[0].step if log.steps else None,
             "last_step": log.steps[-1].step if log.steps else None,
             "label_statistics": log.labels_checked,
             "tokenization_mismatch_lines": log.tokenization_mismatches.count if log.tokenization_mismatches else 0,
             "model": None if log.model is None else {"vocab_size": log.model.vocab_size,
                                                      "pretrained": log.model.pretrained, "source": log.model.source}}
        )
    return report


def inspect(
    model,
    *,
    stage: str | None = None,
    optimizer=None,
    tokenizer=None,
    base=None,
    pretrain_mm_mlp_adapter: str | os.PathLike | None = None,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    severity: Mapping[str, Severity] | None = None,
    options: Mapping[str, object] | None = None,
    name: str | None = None,
) -> Report:
    """Run the live checks on a model in memory, on whatever device it is (see llava_doctor.artifacts.live).

    `model`: a LLaVA-family module, or a PEFT model / DeepSpeed engine / DDP / HF Trainer holding one
    (their optimizer is used unless `optimizer` is given). `stage`: pretrain | finetune | lora, else
    inferred from the config's training flags. `tokenizer`: anything with a length, checked against the
    embedding rows. `base`: a base checkpoint path, or a module, the frozen tower should equal.
    `pretrain_mm_mlp_adapter`: the projector file a finetune run loads (compared at the start of fine-tuning).
    `options`: `at_train_start` (a tower the run trains must still equal its base), `loaded_for_inference`
    (requires_grad is the loader's: no trainable policy), `load_report` (the loader's missing keys, quoted
    as evidence). `name`: what the report calls the model. Under ZeRO-3 with several ranks
    this is collective: call it on every rank. A model that is not LLaVA-like, or has no parameters,
    raises InputError; an optimizer or tokenizer that is not one is recorded in `report.input_errors`.
    """
    from .artifacts.live import component_table, inspect_model, optimizer_groups
    from .findings import InputError

    report = Report()
    live = inspect_model(model, stage=stage, name=name)
    if optimizer is not None:
        try:
            live.optimizer = optimizer_groups(optimizer)
        except InputError as exc:
            report.add_input_error("optimizer", str(exc))
    extra = dict(options or {})
    if tokenizer is not None:
        try:
            extra["tokenizer_size"] = len(tokenizer)
        except TypeError:
            report.add_input_error("tokenizer", f"tokenizer: a {type(tokenizer).__name__} has no length (len(tokenizer))")
    if pretrain_mm_mlp_adapter is not None:
        extra["pretrain_mm_mlp_adapter"] = os.fspath(pretrain_mm_mlp_adapter)
    base_artifact = None
    if isinstance(base, (str, os.PathLike)):
        from .artifacts.readers import open_checkpoint

        base_artifact = open_checkpoint(base)
    elif base is not None:
        try:
            base_artifact = inspect_model(base, name="base")
        except InputError as exc:
            report.add_input_error("base", str(exc))
    context = Context(deep=True, stage=live.stage, base=base_artifact, options=extra)
    _check_into(report, live, live.name, "LiveModel", context, select=select, ignore=ignore, severity=severity)
    report.stats["live"] = {
        "artifact": live.name, "family": live.family, "model_class": live.model_class, "layout": live.layout,
        "wrappers": list(live.wrappers), "stage": live.stage, "stage_reason": live.stage_reason,
        "zero_stage": live.zero_stage, "world_size": live.world_size,
        "tower": {"present": live.tower.present, "loaded": live.tower.loaded, "delay_load": live.tower.delay_load,
                  "wrapper": live.tower.wrapper, "model_class": live.tower.model_class, "reference": live.tower.reference},
        "optimizer": None if live.optimizer is None else {
            "kind": live.optimizer.kind, "source": live.optimizer.source,
            "groups": [{"parameters": n, "lr": lr} for n, lr in live.optimizer.groups]},
        "components": component_table(live),
    }
    return report


def check_generation(
    model=None,
    processor_or_tokenizer=None,
    *,
    images: Sequence = (),
    prompts: Sequence[str] = ("Describe the image.",),
    max_new_tokens: int = 32,
    neutral: bool = True,
    inputs_builder=None,
    conv_mode: str | None = None,
    generation=None,
    live_checks: bool = True,
    live_options: Mapping[str, object] | None = None,
    name: str | None = None,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    severity: Mapping[str, Severity] | None = None,
    options: Mapping[str, object] | None = None,
) -> Report:
    """A greedy smoke test of a live LLaVA-family model on any device (see llava_doctor.artifacts.generation).

    Every prompt is asked about every image (paths, PIL images or (H, W, 3) uint8 arrays) with the model's own
    ``generate``, watched by forward hooks, and again with a blank and a noise image (`neutral`): LD501-LD504
    check what came out, and when the output is degenerate the live checks LD304/LD305 on the same model
    (`live_checks`) feed the "most likely cause" line (``report.stats["generation"]["likely_cause"]``).
    Prompts are built from `processor_or_tokenizer` (a transformers processor's chat template, or an original
    LLaVA model's tokenizer with the conversation template `conv_mode`) unless `inputs_builder` is given.
    `generation`: an already produced Generation to check instead (the CLI passes the one it made);
    `live_options`: options for the live checks (the CLI passes its loader's report).
    """
    from .artifacts.generation import likely_cause, produce_generation
    from .registry import all_checks, matches

    if generation is None:
        generation = produce_generation(model, processor_or_tokenizer, images=images, prompts=prompts,
                                        max_new_tokens=max_new_tokens, neutral=neutral, inputs_builder=inputs_builder,
                                        conv_mode=conv_mode, name=name)
    select, ignore = tuple(select), tuple(ignore)
    report = Report()
    _check_into(report, generation, generation.name, "Generation", Context(options=dict(options or {})), select=select,
                ignore=ignore, severity=severity)
    live = [code for code in ("LD304", "LD305") if code in all_checks() and matches(code, select) and not matches(code, ignore)]
    live_checked = False
    if model is not None and live_checks and live:
        from .findings import InputError

        try:
            report.merge(inspect(model, select=live, severity=severity, name=generation.name, options=live_options))
            live_checked = True
        except InputError as exc:
            report.stats.setdefault("notes", []).append(f"LD304/LD305 not run: {exc}")
    report.stats.pop("live", None)
    report.stats["generation"] = {**generation.to_dict(),
                                  "likely_cause": likely_cause(generation, report.findings, live_checked=live_checked)}
    return report


def preflight(
    launch: str | os.PathLike | Sequence[str],
    *,
    workdir: str | os.PathLike | None = None,
    codebase: str | None = None,
    maps: Mapping[str, str] | None = None,
    stage: str | None = None,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    severity: Mapping[str, Severity] | None = None,
) -> Report:
    """Check a training launch before it runs: a launch script (parsed, never run), a TOML/YAML file of
    train.py arguments, or the command as a list of words. `maps`: {hub id or path: local folder}.
    Findings carry `phase` (when they would bite); see llava_doctor.preflight.runner. Raises InputError
    for a launch that cannot be read."""
    from .preflight.runner import preflight as _preflight

    return _preflight(launch, workdir=workdir, codebase=codebase, maps=maps, stage=stage, select=select, ignore=ignore,
                      severity=severity)
