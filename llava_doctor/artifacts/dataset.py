"""The Dataset artifact: LLaVA-format conversations + a local tokenizer + a template and recipe.

Reads LLaVA's JSON list (``[{"id", "image", "conversations": [{"from", "value"}, ...]}, ...]``) and
JSONL. A file that cannot be read as either is an `InputError`; a record that is readable but
malformed becomes a per-sample problem the checks report. The per-sample analysis (recipe +
oracle) is computed once, lazily, and shared by every LD10x check.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

from ..findings import InputError
from ..templates.analysis import DEFAULT_IMAGE_FEATURES, SampleAnalysis, SampleInput, analyze

KIND = "Dataset"


@dataclass(frozen=True)
class SampleProblem:
    sample: str
    index: int
    message: str


def _image_count(record: dict) -> int:
    image = record.get("image")
    if image is None:
        return 0
    if isinstance(image, (list, tuple)):
        return len(image)
    return 1 if image != "" else 0


def parse_records(records: Iterable[Any]) -> tuple[list[SampleInput], list[SampleProblem]]:
    samples: list[SampleInput] = []
    problems: list[SampleProblem] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            problems.append(SampleProblem(str(index), index, f"record is a {type(record).__name__}, not an object"))
            continue
        sample_id = str(record.get("id", index))
        turns = record.get("conversations")
        if not isinstance(turns, list):
            what = "missing" if turns is None else f"a {type(turns).__name__}, not a list"
            problems.append(SampleProblem(sample_id, index, f"'conversations' is {what}"))
            continue
        bad = [k for k, t in enumerate(turns) if not isinstance(t, dict) or "from" not in t or "value" not in t
               or not isinstance(t.get("value"), str)]
        if bad:
            problems.append(SampleProblem(sample_id, index, f"turn {bad[0]} lacks a 'from' or a string 'value'"))
            continue
        samples.append(SampleInput(sample_id, turns, _image_count(record), has_image_key="image" in record))
    return samples, problems


def read_records(path: str | os.PathLike) -> list[Any]:
    """JSON list or JSONL; anything else is an InputError (one line)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read as UTF-8 text ({exc.__class__.__name__})") from None
    stripped = text.lstrip()
    if not stripped:
        raise InputError(f"{p}: empty file (expected a JSON list or JSONL of conversations)")
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        return data
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: line {lineno} is not JSON ({exc.msg}); expected a JSON list or JSONL") from None
    if len(records) == 1 and isinstance(records[0], dict) and "conversations" not in records[0]:
        raise InputError(f"{p}: a JSON object, not a list of conversations")
    return records


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """A tokenizer from a local directory only (never the hub)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: tokenizer directory not found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; all mean "unreadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"{d}: cannot load a tokenizer ({exc.__class__.__name__}: {first[:200]})") from None


@dataclass
class Dataset:
    """Conversations + a set-up tokenizer + template + recipe; `analyses()` is computed once."""
    kind: ClassVar[str] = "Dataset"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)

    name: str
    samples: list[SampleInput]
    tokenizer: Any  # already configured by `setup_tokenizer`
    template: str
    recipe: str = "llava"
    problems: list[SampleProblem] = field(default_factory=list)
    max_length: int | None = None
    image_features: int = DEFAULT_IMAGE_FEATURES
    pad_token: str | None = None
    base_tokenizer: Any = None  # the tokenizer before set-up (for trying other templates)
    _analyses: list[SampleAnalysis] | None = None

    def analyses(self) -> list[SampleAnalysis]:
        if self._analyses is None:
            self._analyses = analyze(self.samples, self.tokenizer, self.template, self.recipe,
                                     max_length=self.max_length, image_features=self.image_features)
        return self._analyses


def build_dataset(name: str, records: Sequence[Any], tokenizer: Any, template: str, *, recipe: str = "llava",
                  pad_token: str | None = None, max_length: int | None = None,
                  image_features: int = DEFAULT_IMAGE_FEATURES) -> Dataset:
    from ..templates.conversation import TEMPLATES
    from ..templates.recipes import CODEBASES, shared_setup

    if template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; known: {', '.join(sorted(TEMPLATES))}")
    if recipe not in CODEBASES:
        raise InputError(f"unknown recipe {recipe!r}; known: {', '.join(CODEBASES)}")
    samples, problems = parse_records(records)
    try:
        configured = shared_setup(tokenizer, recipe, template, pad_token, max_length=max_length)
    except Exception as exc:
        raise InputError(f"cannot set pad token {pad_token!r} on this tokenizer: {exc}") from None
    return Dataset(name, samples, configured, template, recipe, problems, max_length, image_features, pad_token,
                   tokenizer)


def load_dataset(path: str | os.PathLike, tokenizer_dir: str | os.PathLike, template: str, **options: Any) -> Dataset:
    records = read_records(path)
    if not isinstance(records, list):
        raise InputError(f"{path}: top-level JSON is a {type(records).__name__}, not a list of conversations")
    return build_dataset(str(path), records, load_tokenizer(tokenizer_dir), template, **options)
