"""TrainingLog: the logged step series of a training run, and its readers.

Sources: an HF ``trainer_state.json`` (its ``log_history``), a run directory holding one, a JSON
list of log entries, JSONL (one entry per line, e.g. LlamaFactory's ``trainer_log.jsonl``), and
text logs where the HF Trainer printed its log dicts as Python reprs
(``{'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': 2.6e-08, 'epoch': 0.0}``; transformers 5 prints
the floats as strings: ``{'loss': '0', 'grad_norm': 'nan', ...}``). Live values build the same
object (see llava_doctor.monitor). Values may be NaN, Inf or missing (None); nothing here judges
them, the checks do.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from ..findings import InputError

TRAINER_STATE = "trainer_state.json"
# the keys a log entry may use for each field (HF Trainer names first, then common aliases)
STEP_KEYS = ("step", "global_step", "current_steps")
LR_KEYS = ("learning_rate", "lr")
SUMMARY_KEYS = ("train_loss",)
# a `{...}` fragment without nested braces: one printed log dict
_DICT_FRAGMENT = re.compile(r"\{[^{}]*\}")
# bare nan/inf tokens in a printed dict (float('nan') prints as nan), quoted so literal_eval accepts them
_BARE_NONFINITE = re.compile(r"(?<![\w'\"])(-?(?:nan|inf|NaN|Infinity|Inf))(?![\w'\"])")


@dataclass(frozen=True)
class LogStep:
    """One logged training entry. `step` is the optimizer step when the log has it; `line` is where a
    text/JSONL log printed it (1-based), `index` its position among the train entries."""

    index: int
    step: int | None = None
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    epoch: float | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        if self.step is not None:
            return f"step {self.step}"
        if self.line is not None:
            return f"line {self.line}"
        return f"log entry {self.index + 1}"


@dataclass(frozen=True)
class EvalStep:
    index: int
    step: int | None = None
    loss: float | None = None
    epoch: float | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        return LogStep(self.index, self.step, line=self.line).where


@dataclass(frozen=True)
class TrainingLog:
    kind: ClassVar[str] = "TrainingLog"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)
    name: str
    steps: tuple[LogStep, ...] = ()
    evals: tuple[EvalStep, ...] = ()
    summary: Mapping[str, float | None] = field(default_factory=dict)  # e.g. the final train_loss
    source: str = "entries"  # trainer_state | json | jsonl | text | live | entries
    complete: bool = True  # False for a live window: its last step is "now", not the end of training

    @classmethod
    def from_entries(cls, name: str, entries: Iterable[Mapping[str, Any]], *, source: str = "entries",
                     lines: Iterable[int | None] | None = None) -> "TrainingLog":
        """Build from log_history-shaped dicts; train entries carry "loss", eval entries "eval_loss"."""
        steps: list[LogStep] = []
        evals: list[EvalStep] = []
        summary: dict[str, float | None] = {}
        line_numbers = list(lines) if lines is not None else None
        for position, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                continue
            line = line_numbers[position] if line_numbers is not None else None
            step = _step(entry)
            if "loss" in entry:
                steps.append(LogStep(
                    index=len(steps), step=step, loss=to_float(entry["loss"]),
                    grad_norm=to_float(entry.get("grad_norm")), learning_rate=to_float(_first(entry, LR_KEYS)),
                    epoch=to_float(entry.get("epoch")), line=line,
                ))
            if "eval_loss" in entry:
                evals.append(EvalStep(index=len(evals), step=step, loss=to_float(entry["eval_loss"]),
                                      epoch=to_float(entry.get("epoch")), line=line))
            for key in SUMMARY_KEYS:
                if key in entry:
                    summary[key] = to_float(entry[key])
        return cls(name=name, steps=tuple(steps), evals=tuple(evals), summary=summary, source=source)


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


def _step(entry: Mapping[str, Any]) -> int | None:
    value = to_float(_first(entry, STEP_KEYS))
    return int(value) if value is not None and math.isfinite(value) else None


# --- readers -------------------------------------------------------------------------------------


def read_training_log(path: str | Path) -> TrainingLog:
    """Read any supported log. A directory means its trainer_state.json, or that of its latest
    checkpoint-N/. Raises InputError (one line) for anything unreadable or without log entries."""
    path = Path(path)
    if path.is_dir():
        path = _trainer_state_in(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text log (not UTF-8)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    log = parse_training_log(text, name=str(path))
    if not log.steps and not log.evals and not log.summary:
        raise InputError(f"{path}: no training log entries (expected trainer_state.json log_history, JSONL, "
                         "or printed {'loss': ...} dicts)")
    return log


def _trainer_state_in(directory: Path) -> Path:
    direct = directory / TRAINER_STATE
    if direct.is_file():
        return direct
    numbered = []
    for candidate in directory.glob(f"checkpoint-*/{TRAINER_STATE}"):
        suffix = candidate.parent.name.removeprefix("checkpoint-")
        if suffix.isdigit():
            numbered.append((int(suffix), candidate))
    if not numbered:
        raise InputError(f"{directory}: directory holds no {TRAINER_STATE} (nor checkpoint-N/{TRAINER_STATE})")
    return max(numbered)[1]  # the latest checkpoint's history contains the earlier ones


def parse_training_log(text: str, *, name: str = "<log>") -> TrainingLog:
    """Parse the text of a log in any supported format (detected from the content)."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(stripped)  # Python's json accepts the NaN/Infinity tokens HF writes
        except (json.JSONDecodeError, RecursionError):
            data = None
        if isinstance(data, dict):
            history = data.get("log_history")
            if history is None:
                return TrainingLog.from_entries(name, [data], source="json")
            if not isinstance(history, list):
                raise InputError(f"{name}: log_history is a {type(history).__name__}, not a list")
            return TrainingLog.from_entries(name, history, source="trainer_state")
        if isinstance(data, list):
            return TrainingLog.from_entries(name, data, source="json")
    jsonl = _parse_jsonl(text)
    if jsonl is not None:
        entries, lines = jsonl
        return TrainingLog.from_entries(name, entries, source="jsonl", lines=lines)
    entries, lines = _parse_printed_dicts(text)
    return TrainingLog.from_entries(name, entries, source="text", lines=lines)


def _parse_jsonl(text: str) -> tuple[list[dict], list[int]] | None:
    """Entries and their line numbers when every non-empty line is a JSON object; else None."""
    entries, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not isinstance(entry, dict):
            return None
        entries.append(entry)
        lines.append(number)
    return (entries, lines) if entries else None


def _parse_printed_dicts(text: str) -> tuple[list[dict], list[int]]:
    """Every printed `{...}` dict holding a loss; anything else (configs, tqdm bars, braces in prose) is skipped."""
    entries, lines = [], []
    line, counted_to = 1, 0
    for match in _DICT_FRAGMENT.finditer(text):
        fragment = match.group(0)
        if "loss" not in fragment:
            continue
        line += text.count("\n", counted_to, match.start())  # incrementally: logs can be large
        counted_to = match.start()
        try:
            value = ast.literal_eval(_BARE_NONFINITE.sub(r"'\1'", fragment))
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
        if isinstance(value, dict) and any(k in value for k in ("loss", "eval_loss", *SUMMARY_KEYS)):
            entries.append(value)
            lines.append(line)
    return entries, lines
