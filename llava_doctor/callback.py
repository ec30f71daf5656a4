"""LlavaDoctorCallback: llava-doctor's checks inside a training run, at the step where a failure happens.

    trainer = Trainer(..., callbacks=[LlavaDoctorCallback(on_problem="stop")])   # transformers 4.37 .. 5.x

    doctor = LlavaDoctorCallback(on_problem="raise")                              # any training loop
    doctor.on_train_begin(model=model, optimizer=optimizer)                       # a DeepSpeed engine works too
    for step, batch in enumerate(loader, start=1):
        doctor.observe_batch(batch, step)           # the labels of the batch the model is given
        ...                                         # forward, backward, clip, optimizer step
        doctor.observe(step, loss, grad_norm)       # a logged step
        if doctor.should_stop:
            break

What runs when (each check is the same function ``llava-doctor`` runs on files):
- train start: the live checks (``llava_doctor.inspect``) on the model and its optimizer, with the
  stage from the model config and the Trainer's arguments (LLaVA's ``tune_mm_mlp_adapter``,
  ``lora_enable``, ... when its TrainingArguments carry them).
- every optimizer step: the labels of the micro-batches the model received (LD403: a batch with no
  supervised token, LD104: samples without one). In a Trainer they are read by a forward pre-hook
  on the model (``labels`` as the model gets them), kept on their device and read once per step;
  under DDP/DeepSpeed the counts are summed over ranks so every rank decides alike.
- every log: LD401 (loss 0), LD402 (hidden NaN), LD404 (grad norm stuck), LD405 (first loss
  implausible; the callback asks the Trainer to log step 1 for it). The label counts of the window
  are added to that ``log_history`` entry (``labels_*`` keys), so ``llava-doctor logs`` can check
  the saved trainer_state.json the same way.

``on_problem`` applies to findings at or above ``fail_on`` (default error): ``"warn"`` warns
(RuntimeWarning, rank 0 only) and goes on; ``"stop"`` also sets ``control.should_training_stop``
(the Trainer ends cleanly after the current step; ``should_stop`` for a plain loop); ``"raise"``
raises :class:`LlavaDoctorError` carrying the finding (on every rank, so none waits on the others).
Findings below ``fail_on`` are warned, info ones (what could not be checked) logged. Each code is
reported once, at the step it first fires; ``findings`` keeps them, ``report()`` gives the whole run.

Importing this module imports neither torch nor transformers: the callback follows the
``TrainerCallback`` protocol by name (events it does not use are no-ops).
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any, Iterable, Mapping

from .artifacts.training_log import LabelWindow, LogStep, RunModel, TrainingLog, label_entry, run_model_from_config, to_float
from .findings import Finding, InputError, Report, Severity
from .registry import Context, all_checks, matches, run_checks

logger = logging.getLogger("llava_doctor")

ON_PROBLEM = ("warn", "stop", "raise")
LOG_CODES = ("LD401", "LD402", "LD404", "LD405")  # run on every logged step
LABEL_CODES = ("LD403", "LD104")  # run on the labels of every optimizer step
IGNORE_INDEX = -100
NO_LABEL_STEPS = 2  # optimizer steps in which no rank saw labels before the label checks give up (and say so)


class LlavaDoctorError(RuntimeError):
    """Raised by ``on_problem="raise"``; ``.finding`` is the Finding that fired."""

    def __init__(self, finding: Finding):
        super().__init__(f"{finding.code} {finding.message}")
        self.finding = finding


class LlavaDoctorCallback:
    def __init__(
        self,
        *,
        on_problem: str = "warn",
        fail_on: str | Severity = Severity.ERROR,
        select: Iterable[str] = ("ALL",),
        ignore: Iterable[str] = (),
        severity: Mapping[str, str | Severity] | None = None,
        stage: str | None = None,
        min_run: int = 3,
        pretrained: bool | None = None,
        tokenizer: Any = None,
        base: Any = None,
        record_labels: bool = True,
        name: str = "training run",
    ):
        if on_problem not in ON_PROBLEM:
            raise ValueError(f"on_problem must be one of {', '.join(map(repr, ON_PROBLEM))}, not {on_problem!r}")
        if stage is not None:
            from .stages import check_stage

            check_stage(stage)
        from .registry import check_patterns, expand_severity_overrides

        self.on_problem, self.fail_on = on_problem, Severity.parse(fail_on)
        self.select, self.ignore = check_patterns(select), check_patterns(ignore)
        self.severity = expand_severity_overrides(severity or {})
        self.stage, self.min_run, self.pretrained = stage, max(1, int(min_run)), pretrained
        self.tokenizer, self.base, self.record_labels, self.name = tokenizer, base, record_labels, name
        self.steps: list[LogStep] = []
        self.findings: list[Finding] = []
        self.notes: list[str] = []  # what could not be checked, in words
        self.inspection: Report | None = None
        self.should_stop = False
        self.model: RunModel | None = None
        self._reported: set[tuple[str, bool]] = set()
        self._log_codes = self._chosen(LOG_CODES)
        self._label_codes = self._chosen(LABEL_CODES)
        self._labels = _LabelCounter() if self._label_codes else None
        self._hook = None

    # ------------------------------------------------------------------ HF TrainerCallback events

    def on_train_begin(self, args: Any = None, state: Any = None, control: Any = None, *, model: Any = None,
                       optimizer: Any = None, processing_class: Any = None, tokenizer: Any = None, **kwargs: Any) -> Any:
        """Train start: the live checks. From a Trainer the labels are then watched through a forward
        pre-hook on the model; a plain loop passes them to observe_batch instead."""
        if model is None:
            return control
        self.model = live_run_model(model, pretrained=self.pretrained)
        findings = self._inspect(model, optimizer, self.tokenizer or _tokenizer_of(processing_class or tokenizer), args)
        if state is not None and self._labels is not None:
            self._watch(model)
        self._act(findings, control)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._labels is not None and self._labels.watching:
            self._act(self._flush_labels(state.global_step), control)
        if state.global_step == 1 and "LD405" in self._log_codes and _logs_steps(args):
            control.should_log = True  # as logging_first_step does: LD405 judges the first step's own loss
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        if not logs or "loss" not in logs:
            return control
        if self._labels is not None and self.record_labels and state is not None:
            window = self._labels.take_window()
            history = getattr(state, "log_history", None)
            if window is not None and history and "loss" in history[-1] and history[-1].get("step") == state.global_step:
                history[-1].update(label_entry(window))
        self._act(self._logged(state.global_step if state is not None else len(self.steps) + 1, logs.get("loss"),
                               logs.get("grad_norm"), logs.get("learning_rate"), logs.get("epoch")), control)
        return control

    def on_train_end(self, args: Any = None, state: Any = None, control: Any = None, **kwargs: Any) -> Any:
        self._unwatch()
        if self._labels is not None and self._labels.total.batches and _is_main_process():
            total = self._labels.total
            logger.info("llava-doctor: %d micro-batches, %d samples, %d supervised tokens; %d batches and %d samples "
                        "without a supervised token", total.batches, total.samples, total.supervised_tokens,
                        total.unsupervised_batches, total.unsupervised_samples)
        return control

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):  # TrainerCallback events this hook does not use (and future ones)
            return _ignore_event
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # ------------------------------------------------------------------ plain loops

    def observe(self, step: int, loss: Any, grad_norm: Any = None, learning_rate: Any = None,
                epoch: Any = None) -> list[Finding]:
        """One logged step (values may be tensors, floats or strings); returns the findings it raised."""
        return self._act(self._logged(step, loss, grad_norm, learning_rate, epoch), None)

    def observe_batch(self, batch: Any, step: int | None = None) -> list[Finding]:
        """The labels of one (micro-)batch: a mapping holding ``labels`` or the labels tensor itself. Under
        DDP/DeepSpeed call it on every rank for every micro-batch (the counts are summed over ranks)."""
        if self._labels is None:
            return []
        self._labels.add(batch.get("labels") if isinstance(batch, Mapping) else batch)
        return self._act(self._flush_labels(step if step is not None else self._labels.steps + 1), None)

    def observe_step(self, step: int, loss: Any = None, grad_norm: Any = None, batch: Any = None,
                     learning_rate: Any = None) -> bool:
        """A loop's per-step hook (the bundled core's ``on_step(step, loss, grad_norm, batch)``): the batch's
        labels and the step's values, each step logged; returns ``should_stop``."""
        if batch is not None:
            self.observe_batch(batch, step)
        if loss is not None:
            self.observe(step, loss, grad_norm, learning_rate)
        return self.should_stop

    @property
    def log(self) -> TrainingLog:
        """Everything seen so far as one TrainingLog (steps, the label windows with a problem, the model)."""
        labels = self._labels
        return TrainingLog(name=self.name, steps=tuple(self.steps), source="live", complete=False, model=self.model,
                           labels=tuple(labels.problems) if labels else (), labels_checked=bool(labels and labels.seen))

    def report(self) -> Report:
        """The whole run so far: the train-start inspection and every TrainingLog check over ``log``."""
        report = Report()
        if self.inspection is not None:
            report.merge(self.inspection)
        report.add_artifact(self.name)
        from .api import apply_severity_overrides

        findings = run_checks(self.log, "TrainingLog", Context(options={"min_run": self.min_run}),
                              select=self.select, ignore=self.ignore)
        report.extend(apply_severity_overrides(findings, self.severity))
        return report

    # ------------------------------------------------------------------ internals

    def _chosen(self, codes: Iterable[str]) -> tuple[str, ...]:
        return tuple(c for c in codes if matches(c, self.select) and not matches(c, self.ignore))

    def _logged(self, step: int, loss: Any, grad_norm: Any, learning_rate: Any, epoch: Any) -> list[Finding]:
        self.steps.append(LogStep(index=len(self.steps), step=int(step), loss=_number(loss), grad_norm=_number(grad_norm),
                                  learning_rate=_number(learning_rate), epoch=_number(epoch)))
        if not self._log_codes:
            return []
        from llava_doctor.checks.ld404_grad_norm_stuck import CONSTANT_RUN

        # the last K+1 logs see a run of K ending now and what came before it
        window = TrainingLog(name=self.name, steps=tuple(self.steps[-(max(self.min_run, CONSTANT_RUN) + 1):]),
                             source="live", complete=False, model=self.model)
        return run_checks(window, "TrainingLog", Context(options={"min_run": self.min_run}), select=self._log_codes,
                          ignore=self.ignore)

    def _flush_labels(self, step: int) -> list[Finding]:
        window = self._labels.flush(step)
        if window is None:
            if not self._labels.seen and self._labels.steps >= NO_LABEL_STEPS:
                self._note(f"LD403/LD104 not checked: the model received no `labels` in its first {NO_LABEL_STEPS} "
                           "steps (pass them to observe_batch)")
                self._unwatch()
            return []
        log = TrainingLog(name=self.name, labels=(window,), labels_checked=True, source="live", complete=False)
        return run_checks(log, "TrainingLog", Context(), select=self._label_codes, ignore=self.ignore)

    def _inspect(self, model: Any, optimizer: Any, tokenizer: Any, args: Any) -> list[Finding]:
        if not any(matches(code, self.select) and not matches(code, self.ignore)
                   for code, check in all_checks().items() if "LiveModel" in check.kinds()):
            return []
        from .api import inspect

        try:
            self.inspection = inspect(model, stage=self.stage or stage_from_args(model, args), optimizer=optimizer,
                                      tokenizer=tokenizer, base=self.base, select=self.select, ignore=self.ignore,
                                      severity=self.severity)
        except InputError as exc:
            self._note(f"live checks not run: {exc}")
            return []
        for artifact, message in self.inspection.input_errors:
            self._note(f"live checks: {artifact} not used: {message}")
        return list(self.inspection.findings)

    def _act(self, findings: Iterable[Finding], control: Any) -> list[Finding]:
        """Keep each code's first finding, then warn / stop / raise for those at or above fail_on."""
        new = []
        for finding in findings:
            if self.severity and finding.code in self.severity:
                finding = dataclasses.replace(finding, severity=self.severity[finding.code])
            key = (finding.code, finding.severity >= Severity.WARNING)
            if key not in self._reported:
                self._reported.add(key)
                new.append(finding)
        self.findings.extend(new)
        main = _is_main_process()
        for finding in new:
            where = f" [{finding.location}]" if finding.location else ""
            if finding.severity < Severity.WARNING:
                if main:
                    logger.info("llava-doctor %s info: %s%s", finding.code, finding.message, where)
                continue
            blocking = finding.severity >= self.fail_on
            if blocking and self.on_problem == "raise":
                raise LlavaDoctorError(finding)
            if blocking and self.on_problem == "stop":
                self.should_stop = True
                if control is not None:
                    control.should_training_stop = True
            if main:
                action = " - stopping the run" if blocking and self.on_problem == "stop" else ""
                warnings.warn(f"llava-doctor {finding.code} {finding.severity}: {finding.message}{where}{action}",
                              RuntimeWarning, stacklevel=3)
        return new

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            if _is_main_process():
                logger.warning("llava-doctor: %s", text)

    def _watch(self, model: Any) -> None:
        module = getattr(model, "module", model)  # a DDP / DeepSpeed wrapper's inner model: its forward gets the labels
        if self._hook is None and hasattr(module, "register_forward_pre_hook"):
            counter = self._labels

            def read_labels(mod: Any, args: tuple, kwargs: dict) -> None:
                if mod.training:
                    labels = kwargs.get("labels")
                    if labels is None and args and isinstance(args[0], Mapping):  # XTuner-style forward(data)
                        labels = args[0].get("labels")
                    counter.add(labels)

            self._hook = module.register_forward_pre_hook(read_labels, with_kwargs=True)
            counter.watching = True

    def _unwatch(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._labels is not None:
            self._labels.watching = False


class _LabelCounter:
    """Supervised-label counts per micro-batch, kept on their device until the step ends."""

    def __init__(self) -> None:
        self.pending: list[Any] = []  # per micro-batch: supervised labels per sample (a device tensor)
        self.missing = 0  # micro-batches without labels this step
        self.steps = 0
        self.seen = False
        self.watching = False
        self.total = LabelWindow(None, None, 0, 0, 0)
        self.window: LabelWindow | None = None  # since the last log
        self.problems: list[LabelWindow] = []

    def add(self, labels: Any) -> None:
        if labels is None or not hasattr(labels, "ne"):
            self.missing += 1
            return
        if labels.dim() == 1:
            labels = labels.unsqueeze(0)
        # position 0 is never a target: the causal shift drops it
        self.pending.append(labels[..., 1:].ne(IGNORE_INDEX).sum(dim=-1).reshape(-1))

    def flush(self, step: int) -> LabelWindow | None:
        """This step's window, summed over micro-batches and ranks (one device read, one all-reduce)."""
        pending, self.pending, self.missing = self.pending, [], 0
        self.steps += 1
        counts, positions = _reduce_counts(pending)
        batches, samples, tokens, bad_batches, bad_samples = counts
        if not batches:
            return None
        self.seen = True
        window = LabelWindow(first_step=step, last_step=step, batches=batches, samples=samples, supervised_tokens=tokens,
                             unsupervised_batches=bad_batches, unsupervised_samples=bad_samples,
                             first_unsupervised_batch_step=step if bad_batches else None,
                             first_unsupervised_sample_step=step if bad_samples else None,
                             sample_positions=positions)
        self.total = _add(self.total, window)
        self.window = window if self.window is None else _add(self.window, window)
        if bad_batches or bad_samples:
            self.problems.append(window)
        return window

    def take_window(self) -> LabelWindow | None:
        window, self.window = self.window, None
        return window


def _add(a: LabelWindow, b: LabelWindow) -> LabelWindow:
    return LabelWindow(
        first_step=a.first_step if a.first_step is not None else b.first_step, last_step=b.last_step,
        batches=a.batches + b.batches, samples=a.samples + b.samples, supervised_tokens=a.supervised_tokens + b.supervised_tokens,
        unsupervised_batches=a.unsupervised_batches + b.unsupervised_batches,
        unsupervised_samples=a.unsupervised_samples + b.unsupervised_samples,
        first_unsupervised_batch_step=a.first_unsupervised_batch_step or b.first_unsupervised_batch_step,
        first_unsupervised_sample_step=a.first_unsupervised_sample_step or b.first_unsupervised_sample_step,
    )


def _reduce_counts(pending: list[Any]) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """(batches, samples, supervised tokens, unsupervised batches, unsupervised samples) summed over this
    step's micro-batches and over the ranks, and this rank's unsupervised (micro-batch, position) pairs."""
    dist = _distributed()
    if not pending and dist is None:
        return (0, 0, 0, 0, 0), ()
    import torch

    if pending:
        device = pending[0].device
        per_batch = torch.stack([c.sum() for c in pending])
        flat = torch.cat([c.to(device) for c in pending])
        local = torch.stack([torch.tensor(len(pending), device=device), torch.tensor(flat.numel(), device=device),
                             flat.sum(), per_batch.eq(0).sum(), flat.eq(0).sum()]).to(torch.int64)
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        local = torch.zeros(5, dtype=torch.int64, device=device)
    counts = local.clone()
    if dist is not None:
        dist.all_reduce(counts)
    counts = tuple(int(v) for v in counts.tolist())
    positions: list[tuple[int, int]] = []
    if counts[4] and pending and int(local[4]):
        for batch_index, per_sample in enumerate(pending):
            for position in per_sample.eq(0).nonzero().flatten().tolist()[: 5 - len(positions)]:
                positions.append((batch_index, int(position)))
            if len(positions) >= 5:
                break
    return counts, tuple(positions)


def _distributed():
    """torch.distributed when a process group of more than one rank is running, else None."""
    import sys

    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _is_main_process() -> bool:
    import sys

    if "torch" not in sys.modules:
        return True
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _number(value: Any) -> float | None:
    if hasattr(value, "detach") and hasattr(value, "item"):  # a tensor: one read of one number
        value = value.detach().float().item()
    return to_float(value)


def _ignore_event(*args: Any, **kwargs: Any) -> None:
    return None


def _logs_steps(args: Any) -> bool:
    strategy = getattr(args, "logging_strategy", "steps")
    return str(getattr(strategy, "value", strategy)) != "no"


def _tokenizer_of(processing_class: Any) -> Any:
    """The tokenizer inside a processor (or the tokenizer itself); None when it has no length."""
    candidate = getattr(processing_class, "tokenizer", processing_class)
    try:
        len(candidate)
    except TypeError:
        return None
    return candidate


def unwrap_model(model: Any) -> Any:
    """The model inside a DeepSpeed engine / DDP (`.module`) and a PEFT wrapper (`get_base_model()`)."""
    for _ in range(4):
        inner = getattr(model, "module", None)
        if inner is not None and inner is not model and hasattr(inner, "parameters"):
            model = inner
            continue
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
            continue
        break
    return model


def live_run_model(model: Any, *, pretrained: bool | None = None) -> RunModel:
    """What LD405 needs from a live model: the output embedding's rows (ZeRO-3 aware, resized embeddings
    included), the config's hidden size and initializer range, and whether it came from from_pretrained."""
    module = unwrap_model(model)
    config = getattr(module, "config", None)
    values = config.to_dict() if hasattr(config, "to_dict") else {}
    rows = None
    try:
        weight = module.get_output_embeddings().weight
        shape = getattr(weight, "ds_shape", None) or weight.shape
        rows = int(shape[0]) if len(shape) == 2 else None
    except (AttributeError, TypeError, IndexError):
        pass
    if pretrained is None and config is not None:
        name = getattr(config, "_name_or_path", None)
        pretrained = bool(str(name).strip()) if name is not None else None
    return run_model_from_config(values, source="the live model", vocab_rows=rows, pretrained=pretrained)


def stage_from_args(model: Any, args: Any) -> str | None:
    """The stage LLaVA's TrainingArguments imply, merged over the model config's flags; None when the
    arguments carry no LLaVA flag (the inspection then infers it from the config alone)."""
    from .stages import TrainingFlags, infer_stage

    names = [f.name for f in dataclasses.fields(TrainingFlags)]
    given = {n: getattr(args, n) for n in names if args is not None and hasattr(args, n)}
    if not given:
        return None
    config = getattr(unwrap_model(model), "config", None)
    merged = {n: getattr(config, n) for n in names if config is not None and getattr(config, n, None) is not None}
    merged.update({k: v for k, v in given.items() if v is not None})
    lora = True if hasattr(model, "peft_config") else None
    return infer_stage(TrainingFlags.from_mapping(merged, lora=lora))[0]
