"""TrainingLog: the logged step series of a training run, and its readers.

Sources: an HF ``trainer_state.json`` (its ``log_history``), a run directory holding one, a JSON
list of log entries, JSONL (one entry per line, e.g. LlamaFactory's ``trainer_log.jsonl``), and
text logs where the HF Trainer printed its log dicts as Python reprs
(``{'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': 2.6e-08, 'epoch': 0.0}``; transformers 5 prints
the floats as strings: ``{'loss': '0', 'grad_norm': 'nan', ...}``). A text log also yields the
count of LLaVA's own ``WARNING: tokenization mismatch: X vs. Y. (ignored)`` prints (one per dropped
sample). Live values build the same object (see llava_doctor.callback). Values may be NaN, Inf or
missing (None); nothing here judges them, the checks do.

Besides losses a log may carry, per logged entry, the label statistics of the batches trained since
the previous entry (keys ``labels_*``, written into ``log_history`` by ``LlavaDoctorCallback``; see
:class:`LabelWindow`), and the reader picks up the ``config.json`` saved beside a
``trainer_state.json`` (vocabulary size, whether the weights were loaded) for the first-loss check.

Every read is bounded: only regular files are opened; JSON documents are decoded entry by entry
from a bounded buffer and text logs line by line (``llava_doctor.files.iter_lines``), so a 2 GB
log costs megabytes, not gigabytes; at most ``MAX_LOG_ENTRIES`` entries are kept. Where reading
stopped short (a file cut off mid-entry, invalid JSON, the entry cap, over-long lines) the log
records a :class:`LogCut` saying what was read and where it stopped: a salvaged log is never a
clean one (LD406).
"""
from __future__ import annotations

import ast
import codecs
import io
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, ClassVar, Iterable, Mapping

from ..files import MiB, iter_lines, open_regular, read_json
from ..findings import InputError

TRAINER_STATE = "trainer_state.json"
# the keys a log entry may use for each field (HF Trainer names first, then common aliases)
STEP_KEYS = ("step", "global_step", "current_steps")
LR_KEYS = ("learning_rate", "lr")
SUMMARY_KEYS = ("train_loss",)
MAX_LOG_ENTRIES = 1_000_000  # train entries kept (a run logging every step for a million steps)
MAX_JSON_VALUE_CHARS = 16 * MiB  # one log_history entry (or one other top-level value) of a JSON log
_CHUNK = 1 * MiB
# a `{...}` fragment without nested braces: one printed log dict
_DICT_FRAGMENT = re.compile(r"\{[^{}]*\}")
# bare nan/inf tokens in a printed dict (float('nan') prints as nan), quoted so literal_eval accepts them
_BARE_NONFINITE = re.compile(r"(?<![\w'\"])(-?(?:nan|inf|NaN|Infinity|Inf))(?![\w'\"])")
# LLaVA / LLaVA-NeXT preprocess_*: `WARNING: tokenization mismatch: {cur_len} vs. {total_len}. (ignored)`,
# LLaVA-NeXT's `...{total_len}.(#turns={n} ignored)` and lower-case `warning:` variants, FastChat's
# `... #turn = {n}. (ignored)`. Each print is one sample whose labels were all set to -100.
_MISMATCH = re.compile(r"warning: tokenization mismatch: (\d+) vs\. (\d+)\.\s*(?:#turns?\s*=\s*(\d+)|\(#turns=(\d+))?",
                       re.IGNORECASE)
_WS = re.compile(r"[ \t\n\r]*")

# label statistics in a log entry (LlavaDoctorCallback writes them into log_history); field -> key
LABEL_KEYS = {
    "batches": "labels_batches",
    "samples": "labels_samples",
    "supervised_tokens": "labels_supervised_tokens",
    "unsupervised_batches": "labels_unsupervised_batches",
    "unsupervised_samples": "labels_unsupervised_samples",
    "first_unsupervised_batch_step": "labels_first_unsupervised_batch_step",
    "first_unsupervised_sample_step": "labels_first_unsupervised_sample_step",
}


@dataclass(frozen=True, slots=True)
class LogStep:
    """One logged training entry. `step` is the optimizer step when the log has it; `line` is where a
    text/JSONL log printed it (1-based), `index` its position among the run's train entries."""

    index: int
    step: int | None = None
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    epoch: float | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        return _where(self.step, self.line, self.index)


@dataclass(frozen=True, slots=True)
class EvalStep:
    index: int
    step: int | None = None
    loss: float | None = None
    epoch: float | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        return _where(self.step, self.line, self.index)


def _where(step: int | None, line: int | None, index: int) -> str:
    if step is not None:
        return f"step {step}"
    if line is not None:
        return f"line {line}"
    return f"log entry {index + 1}"


@dataclass(frozen=True)
class LabelWindow:
    """Label statistics of the (micro-)batches trained in optimizer steps first_step..last_step.

    A sample is unsupervised when no label after its first position is -100-free (the causal shift
    drops position 0); a micro-batch is unsupervised when none of its samples is supervised. Live,
    a window is one optimizer step, summed over gradient accumulation and ranks; in a saved log it
    covers the steps since the previous log entry. `sample_positions` (live only) names the
    unsupervised samples' positions in this rank's micro-batches.
    """

    first_step: int | None
    last_step: int | None
    batches: int
    samples: int
    supervised_tokens: int
    unsupervised_batches: int = 0
    unsupervised_samples: int = 0
    first_unsupervised_batch_step: int | None = None
    first_unsupervised_sample_step: int | None = None
    line: int | None = None
    sample_positions: tuple[tuple[int, int], ...] = ()  # (micro-batch, position) on this rank

    @property
    def positions(self) -> str:
        """'micro-batch 0: position 1, 3; micro-batch 1: position 0' (live, this rank's), or ''."""
        batches = sorted({b for b, _ in self.sample_positions})
        return "; ".join(f"micro-batch {b}: position {', '.join(str(p) for c, p in self.sample_positions if c == b)}"
                         for b in batches)

    @property
    def where(self) -> str:
        if self.first_step is not None and self.last_step is not None and self.first_step != self.last_step:
            return f"steps {self.first_step}..{self.last_step}"
        if self.last_step is not None:
            return f"step {self.last_step}"
        return f"line {self.line}" if self.line is not None else "the log"


def label_span(windows: Iterable[LabelWindow]) -> str:
    """'at step 7' for one window, 'in steps 1..100' for several (what the label counts cover)."""
    windows = list(windows)
    if len(windows) == 1:
        where = windows[0].where
        return f"at {where}" if where.startswith("step ") else f"in {where}"
    first = next((w.first_step or w.last_step for w in windows if (w.first_step or w.last_step) is not None), None)
    last = next((w.last_step for w in reversed(windows) if w.last_step is not None), None)
    return f"in steps {first}..{last}" if first is not None and last is not None else f"in {len(windows)} log entries"


def label_entry(window: LabelWindow) -> dict[str, int]:
    """The ``labels_*`` keys of one log entry (the inverse of what the reader parses)."""
    out = {key: getattr(window, name) for name, key in LABEL_KEYS.items()}
    return {k: int(v) for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class MismatchLines:
    """LLaVA's `WARNING: tokenization mismatch: X vs. Y` prints found in a text log."""

    count: int
    first_line: int
    last_line: int
    examples: tuple[tuple[int, int, int | None, int], ...] = ()  # (X, Y, #turns, line), the first few


@dataclass(frozen=True)
class LogCut:
    """Where reading stopped short. kind: truncated | corrupt | capped | long_lines."""

    kind: str
    where: str  # e.g. "byte 12,345 of 12,345 (line 401)"
    read: str  # what was read before it, e.g. "41 log_history entries (steps 5..205)"


@dataclass(frozen=True)
class RunModel:
    """What the first-loss check needs to know about the trained model (from config.json or the live model)."""

    vocab_size: int | None
    pretrained: bool | None  # weights loaded from a checkpoint (from_pretrained) vs built from a config
    hidden_size: int | None = None
    initializer_range: float | None = None
    source: str = ""  # "config.json beside the log", "the live model", ...
    note: str = ""  # why something above is unknown


@dataclass(frozen=True)
class TrainingLog:
    kind: ClassVar[str] = "TrainingLog"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)
    name: str
    steps: tuple[LogStep, ...] = ()
    evals: tuple[EvalStep, ...] = ()
    summary: Mapping[str, float | None] = field(default_factory=dict)  # e.g. the final train_loss
    source: str = "entries"  # trainer_state | json | jsonl | text | live | entries
    complete: bool = True  # False for a live window: its last step is "now", not the end of training
    labels: tuple[LabelWindow, ...] = ()
    labels_checked: bool = False  # the source carried label statistics (even if `labels` holds no problem)
    tokenization_mismatches: MismatchLines | None = None
    cuts: tuple[LogCut, ...] = ()
    model: RunModel | None = None

    @classmethod
    def from_entries(cls, name: str, entries: Iterable[Mapping[str, Any]], *, source: str = "entries",
                     lines: Iterable[int | None] | None = None) -> "TrainingLog":
        """Build from log_history-shaped dicts; train entries carry "loss", eval entries "eval_loss"."""
        builder = _LogBuilder()
        line_numbers = list(lines) if lines is not None else None
        for position, entry in enumerate(entries):
            builder.add(entry, line_numbers[position] if line_numbers is not None else None)
        return builder.build(name, source)


def to_float(value: Any) -> float | None:
    """A logged number: int/float, or a string such as '0', '1.917', 'nan', '-inf'; else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def is_nonfinite(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def _first(entry: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((entry[k] for k in keys if k in entry), None)


def _int(value: Any) -> int | None:
    number = to_float(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _step(entry: Mapping[str, Any]) -> int | None:
    return _int(_first(entry, STEP_KEYS))


class _LogBuilder:
    """Accumulates entries one at a time (readers never hold the parsed entries of a whole file)."""

    def __init__(self) -> None:
        self.steps: list[LogStep] = []
        self.evals: list[EvalStep] = []
        self.summary: dict[str, float | None] = {}
        self.labels: list[LabelWindow] = []
        self.labels_checked = False
        self.full = False
        self.entries = 0  # log entries read (train, eval, summary and any other)
        self.cuts: list[LogCut] = []
        self.mismatch_count = 0
        self.mismatch_lines: tuple[int, int] | None = None
        self.mismatch_examples: list[tuple[int, int, int | None, int]] = []

    def add(self, entry: Any, line: int | None = None) -> None:
        if not isinstance(entry, Mapping):
            return
        if self.entries >= MAX_LOG_ENTRIES:
            self.full = True
            return
        self.entries += 1
        step = _step(entry)
        if "loss" in entry:
            previous = self.steps[-1].step if self.steps else 0
            self.steps.append(LogStep(
                index=len(self.steps), step=step, loss=to_float(entry["loss"]),
                grad_norm=to_float(entry.get("grad_norm")), learning_rate=to_float(_first(entry, LR_KEYS)),
                epoch=to_float(entry.get("epoch")), line=line,
            ))
            if LABEL_KEYS["batches"] in entry:
                self._add_labels(entry, first=(previous + 1) if previous is not None and step is not None else None,
                                 last=step, line=line)
        if "eval_loss" in entry:
            self.evals.append(EvalStep(index=len(self.evals), step=step, loss=to_float(entry["eval_loss"]),
                                       epoch=to_float(entry.get("epoch")), line=line))
        for key in SUMMARY_KEYS:
            if key in entry:
                self.summary[key] = to_float(entry[key])

    def _add_labels(self, entry: Mapping[str, Any], *, first: int | None, last: int | None, line: int | None) -> None:
        values = {name: _int(entry.get(key)) for name, key in LABEL_KEYS.items()}
        if values["batches"] is None:
            return
        self.labels_checked = True
        window = LabelWindow(first_step=first, last_step=last, line=line,
                             **{k: (v or 0) if not k.startswith("first_") else v for k, v in values.items()})
        if window.unsupervised_batches or window.unsupervised_samples or window.batches:
            self.labels.append(window)

    def add_mismatch(self, match: re.Match, line: int) -> None:
        self.mismatch_count += 1
        first = self.mismatch_lines[0] if self.mismatch_lines else line
        self.mismatch_lines = (first, line)
        if len(self.mismatch_examples) < 3:
            turns = match.group(3) or match.group(4)
            self.mismatch_examples.append((int(match.group(1)), int(match.group(2)), int(turns) if turns else None, line))

    def read_summary(self, unit: str = "log entries") -> str:
        steps = [s.step for s in self.steps if s.step is not None]
        span = f" (steps {steps[0]}..{steps[-1]})" if steps else ""
        return f"{self.entries:,} {unit}{span}"

    def build(self, name: str, source: str) -> TrainingLog:
        mismatches = None
        if self.mismatch_count and self.mismatch_lines:
            mismatches = MismatchLines(self.mismatch_count, self.mismatch_lines[0], self.mismatch_lines[1],
                                       tuple(self.mismatch_examples))
        return TrainingLog(name=name, steps=tuple(self.steps), evals=tuple(self.evals), summary=self.summary,
                           source=source, labels=tuple(self.labels), labels_checked=self.labels_checked,
                           tokenization_mismatches=mismatches, cuts=tuple(self.cuts))

    @property
    def empty(self) -> bool:
        return not (self.steps or self.evals or self.summary or self.mismatch_count)


# --- readers -------------------------------------------------------------------------------------


def read_training_log(path: str | os.PathLike) -> TrainingLog:
    """Read any supported log. A directory means its trainer_state.json, or that of its latest
    checkpoint-N/. Raises InputError (one line) for anything unreadable or without log entries."""
    path = Path(path)
    if path.is_dir():
        path = _trainer_state_in(path)
    with open_regular(path, what="training log") as fh:
        size = os.fstat(fh.fileno()).st_size
        log = _parse_stream(fh, name=str(path), size=size)
    if path.name == TRAINER_STATE or log.source == "trainer_state":
        log = replace(log, model=_model_beside(path))
    return log


def parse_training_log(text: str, *, name: str = "<log>") -> TrainingLog:
    """Parse the text of a log in any supported format (detected from the content)."""
    data = text.encode("utf-8")
    return _parse_stream(io.BytesIO(data), name=name, size=len(data))


def _trainer_state_in(directory: Path) -> Path:
    direct = directory / TRAINER_STATE
    if direct.exists() or direct.is_symlink():  # a special file here is refused by open_regular, not skipped
        return direct
    numbered = []
    for candidate in directory.glob(f"checkpoint-*/{TRAINER_STATE}"):
        suffix = candidate.parent.name.removeprefix("checkpoint-")
        if suffix.isdigit():
            numbered.append((int(suffix), candidate))
    if not numbered:
        raise InputError(f"{directory}: directory holds no {TRAINER_STATE} (nor checkpoint-N/{TRAINER_STATE})")
    return max(numbered)[1]  # the latest checkpoint's history contains the earlier ones


def _model_beside(path: Path) -> RunModel | None:
    config = path.parent / "config.json"
    if not (config.exists() or config.is_symlink()):
        return None
    try:
        data = read_json(config, what="config.json")
    except InputError as exc:
        return RunModel(None, None, source="config.json beside the log", note=f"config.json beside the log is unreadable ({exc})")
    return run_model_from_config(data, source="config.json beside the log")


def run_model_from_config(config: Mapping[str, Any], *, source: str, vocab_rows: int | None = None,
                          pretrained: bool | None = None) -> RunModel:
    """RunModel from a config dict (HF-native Llava keeps the LLM's fields in text_config; original
    LLaVA at the top level). `_name_or_path` non-empty means the weights came from from_pretrained
    (transformers 4.x writes it into config.json; 5.x does not, and then it is unknown)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}

    def pick(key: str) -> Any:
        return text.get(key, config.get(key))

    vocab = vocab_rows if vocab_rows else _int(pick("vocab_size"))
    if pretrained is None and "_name_or_path" in config:
        pretrained = bool(str(config.get("_name_or_path") or "").strip())
    hidden = _int(pick("hidden_size"))
    init = to_float(pick("initializer_range"))
    notes = []
    if not vocab:
        notes.append(f"{source} names no vocab_size")
    if pretrained is None:
        notes.append(f"{source} does not say whether the weights were loaded (no _name_or_path)")
    return RunModel(vocab_size=vocab or None, pretrained=pretrained, hidden_size=hidden, initializer_range=init,
                    source=source, note="; ".join(notes))


def _parse_stream(fh: IO[bytes], *, name: str, size: int | None) -> TrainingLog:
    """Detect the format from the first bytes and read the stream in bounded memory."""
    head = fh.read(4096)
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    fh.seek(0)
    builder = _LogBuilder()
    source = None
    if first in (b"{", b"["):
        source = _read_json_document(fh, builder, name=name, size=size)
        if source is None:  # not one JSON document (JSONL, or a text log starting with a printed dict)
            fh.seek(0)
            builder = _LogBuilder()
    if source is None:
        source = _read_lines(fh, builder)
    if builder.full:
        builder.cuts.append(LogCut("capped", f"entry {MAX_LOG_ENTRIES + 1:,}",
                                   f"the first {builder.read_summary()}; later entries were not read"))
    if builder.empty:
        cut = next((c for c in builder.cuts if c.kind in ("truncated", "corrupt")), None)
        if cut is not None:
            raise InputError(f"{name}: {'cut off' if cut.kind == 'truncated' else 'invalid JSON'} at {cut.where} "
                             "before any log entry")
        raise InputError(f"{name}: no training log entries (expected trainer_state.json log_history, JSONL, "
                         "or printed {'loss': ...} dicts)")
    return builder.build(name, source)


# --- JSON documents, decoded entry by entry ---------------------------------------------------------


class _Cut(Exception):
    def __init__(self, kind: str, where: str):
        super().__init__(kind)
        self.kind, self.where = kind, where


class _NotOneDocument(Exception):
    """The stream is not a single JSON document (JSONL, or a Python-repr text log)."""


class _JsonStream:
    """JSON values decoded one at a time from a binary stream through a bounded text buffer."""

    def __init__(self, fh: IO[bytes], size: int | None):
        self.fh, self.size = fh, size
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.json = json.JSONDecoder()  # accepts the NaN / Infinity tokens HF writes
        self.buf, self.pos, self.eof = "", 0, False
        self.dropped_lines = 0
        self.keys_seen = 0  # top-level keys decoded: the stream is JSON, not a printed Python dict
        self.in_history = False

    def fill(self) -> bool:
        if self.eof:
            return False
        if self.pos > _CHUNK:  # forget what was decoded already
            self.dropped_lines += self.buf.count("\n", 0, self.pos)
            self.buf, self.pos = self.buf[self.pos:], 0
        data = self.fh.read(_CHUNK)
        if not data:
            self.eof = True
            self.buf += self.decoder.decode(b"", final=True)
            return False
        self.buf += self.decoder.decode(data)
        return True

    def peek(self) -> str | None:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                self.pos = _WS.match(self.buf, self.pos).end()
                return self.buf[self.pos] if self.pos < len(self.buf) else None

    def take(self, char: str, what: str) -> None:
        found = self.peek()
        if found != char:
            raise self.cut(self.pos, f"expected {what}")
        self.pos += 1

    def next_item(self, close: str) -> bool:
        """After an item of an array/object: True at ',' (another follows), False at `close`; either is consumed."""
        found = self.peek()
        if found in (",", close):
            self.pos += 1
            return found == ","
        raise self.cut(self.pos, f"expected ',' or '{close}'")

    def value(self) -> Any:
        if self.peek() is None:
            raise self.cut(self.pos, "a value")
        while True:
            try:
                value, end = self.json.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise _Cut("corrupt", f"{self.location(self.pos)} (nested too deeply)") from None
            except json.JSONDecodeError as exc:
                if len(self.buf) - self.pos > MAX_JSON_VALUE_CHARS:
                    raise _Cut("corrupt", f"{self.location(self.pos)} (a value longer than "
                                          f"{MAX_JSON_VALUE_CHARS:,} characters)") from None
                if self.fill():
                    continue
                raise self.cut(exc.pos, exc.msg) from None
            if end >= len(self.buf) and self.fill():  # a number may go on in the next chunk
                continue
            self.pos = end
            return value

    def cut(self, pos: int, reason: str) -> _Cut:
        """A failure at `pos`: truncated when the text ends before the document does, else corrupt."""
        if self.eof and (not self.buf[pos:].strip(" \t\r\n\x00") or self._runs_to_end(pos)):
            size = f"byte {self.size:,}, " if self.size is not None else ""
            return _Cut("truncated", f"the end of the file ({size}line {self.line_of(len(self.buf))})")
        return _Cut("corrupt", f"{self.location(pos)} ({reason})")

    def _runs_to_end(self, pos: int) -> bool:
        """A value starting at or before `pos` is still open at the end of the text (no closing bracket after it)."""
        tail = self.buf[pos:].rstrip(" \t\r\n\x00")
        return not tail.endswith(("}", "]"))

    def line_of(self, pos: int) -> int:
        return self.dropped_lines + self.buf.count("\n", 0, pos) + 1

    def location(self, pos: int) -> str:
        line_start = self.buf.rfind("\n", 0, pos) + 1
        return f"line {self.line_of(pos)}, column {pos - line_start + 1}"


def _read_json_document(fh: IO[bytes], builder: _LogBuilder, *, name: str, size: int | None) -> str | None:
    """Read a trainer_state.json / JSON list / single JSON entry into `builder`; the source name, or
    None when the stream is not one JSON document. A document cut short keeps what was read (LogCut)."""
    stream = _JsonStream(fh, size)
    try:
        if stream.peek() == "[":
            stream.pos += 1
            _read_entries(stream, builder)
            source = "json"
        else:
            source = _read_object(stream, builder, name)
        if stream.peek() is not None:
            if source != "trainer_state":
                raise _NotOneDocument
            builder.cuts.append(LogCut("corrupt", f"{stream.location(stream.pos)} (content after the end of the "
                                                  "JSON document)", builder.read_summary("log_history entries")))
        return source
    except _NotOneDocument:
        return None
    except _Cut as cut:
        if builder.empty and cut.kind == "corrupt" and not stream.keys_seen:
            return None  # not JSON at all (a text log opening with `[2024-...] INFO`, say): read it as text
        where = cut.where + (" inside log_history" if stream.in_history else "")
        builder.cuts.append(LogCut(cut.kind, where, builder.read_summary(
            "log_history entries" if stream.keys_seen else "log entries")))
        return "trainer_state" if stream.keys_seen else "json"
    except _Capped:
        return "trainer_state" if stream.keys_seen else "json"


class _Capped(Exception):
    pass


def _read_entries(stream: _JsonStream, builder: _LogBuilder) -> None:
    """The elements of a JSON array whose `[` was consumed, one at a time."""
    stream.in_history = True
    if stream.peek() == "]":
        stream.pos += 1
        stream.in_history = False
        return
    while True:
        builder.add(stream.value())
        if builder.full:
            raise _Capped
        if not stream.next_item("]"):
            stream.in_history = False
            return


def _read_object(stream: _JsonStream, builder: _LogBuilder, name: str) -> str:
    """A top-level JSON object: trainer_state.json (its log_history streamed), or one log entry."""
    stream.take("{", "'{'")
    stream.keys_seen = 0
    fields: dict[str, Any] = {}
    history_seen = False
    if stream.peek() == "}":
        stream.pos += 1
    else:
        while True:
            if stream.peek() != '"':
                if not stream.keys_seen:
                    raise _NotOneDocument  # `{'loss': ...}`: a printed Python dict, not JSON
                raise stream.cut(stream.pos, "expected a key")
            key = stream.value()
            stream.keys_seen += 1
            stream.take(":", "':' after a key")
            if key == "log_history":
                history_seen = True
                if stream.peek() != "[":
                    value = stream.value()
                    raise InputError(f"{name}: log_history is a {type(value).__name__}, not a list")
                stream.pos += 1
                _read_entries(stream, builder)
            else:
                value = stream.value()
                if len(fields) < 1000:
                    fields[str(key)] = value
            if not stream.next_item("}"):
                break
    if history_seen:
        return "trainer_state"
    if stream.peek() is not None:
        raise _NotOneDocument  # a second object follows: JSONL
    builder.add(fields)
    return "json"


# --- line-oriented logs: JSONL and printed dicts ---------------------------------------------------


def _read_lines(fh: IO[bytes], builder: _LogBuilder) -> str:
    """JSONL entries, printed `{'loss': ...}` dicts and LLaVA's tokenization-mismatch prints, line by line."""
    json_lines = other_lines = 0
    long_lines: list[int] = []
    if isinstance(fh, io.BufferedReader):  # a 1 MiB buffer: readline over an over-long line is 12x faster than with 8 KiB
        fh = io.BufferedReader(fh.raw, buffer_size=_CHUNK)
    for number, line, cut in iter_lines(fh):
        if cut:
            long_lines.append(number)
        if "mismatch" in line:
            for match in _MISMATCH.finditer(line):
                builder.add_mismatch(match, number)
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] == "{" and stripped[-1] == "}" and '"' in stripped[:3]:
            try:
                entry = json.loads(stripped)
            except (ValueError, RecursionError):
                entry = None
            if isinstance(entry, dict):
                json_lines += 1
                builder.add(entry, number)
                continue
        other_lines += 1
        if "loss" in line and not builder.full:
            for entry in _printed_dicts(line):
                builder.add(entry, number)
    if long_lines:
        builder.cuts.append(LogCut(
            "long_lines", f"line {long_lines[0]:,}" + (f" and {len(long_lines) - 1:,} more" if len(long_lines) > 1 else ""),
            f"the first {MiB:,} bytes of each line longer than that; the rest of those lines was skipped"))
    return "jsonl" if json_lines and not other_lines else "text"


def _printed_dicts(line: str) -> Iterable[dict]:
    """Every printed `{...}` dict holding a loss; anything else (configs, tqdm bars, braces in prose) is skipped."""
    for match in _DICT_FRAGMENT.finditer(line):
        fragment = match.group(0)
        if "loss" not in fragment:
            continue
        try:
            value = ast.literal_eval(_BARE_NONFINITE.sub(r"'\1'", fragment))
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
        if isinstance(value, dict) and any(k in value for k in ("loss", "eval_loss", *SUMMARY_KEYS)):
            yield value
