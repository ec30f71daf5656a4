"""The Dataset artifact: LLaVA-format conversations + a local tokenizer + a template and recipe.

Reads LLaVA's JSON list (``[{"id", "image", "conversations": [{"from", "value"}, ...]}, ...]``) and
JSONL, streaming: `iter_records` parses one record at a time from a bounded buffer, so a JSON array
of several GB (LLaVA-OneVision's mixtures) costs one record's memory. A file that cannot be read as
either is an `InputError`; a record that is readable but malformed, or larger than the per-record
and per-sample limits, becomes a per-sample problem the checks report. The per-sample analysis
(recipe + oracle) is computed once per chunk, lazily, and shared by every LD10x check.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Sequence

from ..files import open_regular
from ..findings import InputError, Severity
from ..templates.analysis import DEFAULT_IMAGE_FEATURES, SampleAnalysis, SampleInput, analyze

KIND = "Dataset"


@dataclass(frozen=True)
class SampleProblem:
    sample: str
    index: int
    message: str
    severity: Severity = Severity.ERROR
    kind: str = "unreadable"  # "unreadable" (LLaVA's dataset raises on it) or "too large" (not audited)


def _image_count(record: dict) -> int:
    image = record.get("image")
    if image is None:
        return 0
    if isinstance(image, (list, tuple)):
        return len(image)
    return 1 if image != "" else 0


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_size(turns: list) -> int:
    return sum(len(t["value"]) for t in turns)


def parse_records(records: Iterable[Any], *, start: int = 0, max_sample_chars: int = 0
                  ) -> tuple[list[SampleInput], list[SampleProblem]]:
    """Records (or (index, record) pairs from `iter_records`) -> samples and per-sample problems.

    `max_sample_chars` (default `MAX_SAMPLE_CHARS`) caps the conversation text the audit tokenizes
    for one sample; a larger sample is reported and not tokenized."""
    limit = max_sample_chars or MAX_SAMPLE_CHARS
    samples: list[SampleInput] = []
    problems: list[SampleProblem] = []
    for position, item in enumerate(records, start):
        index, record = item if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int) else (position, item)
        if isinstance(record, OversizedRecord):
            problems.append(SampleProblem(
                str(index), index, f"record {index} is {record.size:,}+ characters of JSON, over the reader's "
                f"{MAX_RECORD_BYTES:,}-character limit per record: skipped, not audited",
                Severity.WARNING, "too large"))
            continue
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
        if any(_SURROGATE.search(t["value"]) for t in turns):
            problems.append(SampleProblem(sample_id, index, "text holds an unpaired UTF-16 surrogate (a \\udXXX escape): "
                                                            "the tokenizer raises on it"))
            continue
        size = _text_size(turns)
        if size > limit:
            problems.append(SampleProblem(
                sample_id, index, f"{size:,} characters of conversation text, over the audit's limit of {limit:,} "
                "per sample: not tokenized, not audited (raise it with --max-sample-chars)", Severity.WARNING,
                "too large"))
            continue
        samples.append(SampleInput(sample_id, turns, _image_count(record), has_image_key="image" in record,
                                   has_video_key="video" in record, index=index))
    return samples, problems


MiB = 1024 * 1024
MAX_RECORD_BYTES = 16 * MiB  # one record (sample) of the data file; a larger one is skipped and reported
MAX_SAMPLE_CHARS = 256 * 1024  # conversation text the audit tokenizes per sample; above it: a finding, no tokenization
READ_CHUNK = 1 * MiB
_STRUCTURE = re.compile(r'[{}\[\]"]')


@dataclass(frozen=True)
class OversizedRecord:
    """A record the reader skipped without keeping it: it is larger than the per-record limit."""

    size: int  # characters seen before the reader gave up keeping it (at least the limit)


class _ValueEnd:
    """Finds where one JSON array element ends, resumably across chunks, without parsing it (jumps
    from one structural character or quote to the next at C speed; no regex that backtracks)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.started = False
        self.carry = 0  # backslashes ending the previous chunk inside a string

    def _string_end(self, text: str, pos: int) -> int | None:
        """Index just past the quote closing the string that `pos` is inside, or None (continues)."""
        i = pos
        while True:
            j = text.find('"', i)
            if j < 0:
                seg = text[pos:]
                n = len(seg) - len(seg.rstrip("\\"))
                self.carry = n + (self.carry if n == len(seg) else 0)
                return None
            k = j
            while k > pos and text[k - 1] == "\\":
                k -= 1
            n = j - k + (self.carry if k == pos else 0)
            self.carry = 0
            if n % 2 == 0:
                return j + 1
            i = j + 1

    def feed(self, text: str, pos: int) -> int | None:
        """Scan text[pos:]; the index just past the element, or None when it continues beyond."""
        n = len(text)
        while pos < n:
            if self.in_string:
                end = self._string_end(text, pos)
                if end is None:
                    return None
                pos = end
                self.in_string = False
                if self.depth == 0:
                    return pos
                continue
            if not self.started:
                char = text[pos]
                if char.isspace():
                    pos += 1
                    continue
                self.started = True
                if char not in '{["':  # a scalar element: it ends at the next ',' or ']'
                    end = min((i for i in (text.find(",", pos), text.find("]", pos)) if i >= 0), default=-1)
                    return end if end >= 0 else None
            match = _STRUCTURE.search(text, pos)
            if match is None:
                return None
            char, pos = match.group(), match.end()
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    return pos
        return None


def _position(text_before: str, consumed_lines: int) -> tuple[int, int]:
    line = consumed_lines + text_before.count("\n") + 1
    return line, len(text_before) - (text_before.rfind("\n") + 1) + 1


class _Chars:
    """Strict UTF-8 text of a regular file, read in chunks."""

    def __init__(self, path: str) -> None:
        import codecs

        self.path = path
        self.fh = open_regular(path, what="data file")
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.offset = 0
        self.eof = False

    def read(self) -> str:
        if self.eof:
            return ""
        data = self.fh.read(READ_CHUNK)
        self.offset += len(data)
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: not UTF-8 text (at byte {self.offset - len(data) + exc.start})") from None
        if not data:
            self.eof = True
        return text

    def close(self) -> None:
        self.fh.close()


_BLANK = re.compile(r"[ \t\r\n]*")


def _iter_array(chars: _Chars, text: str, max_record: int) -> Iterator[tuple[int, Any]]:
    """Elements of the JSON array whose '[' starts `text`, one at a time; memory bounded by `max_record`.

    Each element is parsed by the C decoder straight from a buffer of about one read chunk; only an
    element cut by the end of the buffer is scanned (`_ValueEnd`) to learn where it ends, so the
    buffer is extended once, not re-parsed per chunk."""
    decoder = json.JSONDecoder()
    lines = 0  # newlines in the part of the file already dropped from `text`
    pos = text.index("[") + 1
    index = 0
    after_value = False

    def where(at: int) -> str:
        line, col = _position(text[:at], lines)
        return f"{chars.path}: invalid JSON at line {line} column {col}"

    def fill() -> bool:
        nonlocal text, pos, lines
        more = chars.read()
        if not more:
            return False
        lines += text.count("\n", 0, pos)
        text, pos = text[pos:] + more, 0
        return True

    while True:
        while True:
            pos = _BLANK.match(text, pos).end()
            if pos < len(text) or not fill():
                break
        if pos >= len(text):
            raise InputError(f"{where(pos)}: the array is not closed (truncated file?)")
        char = text[pos]
        if char == "]" and not after_value and index:
            raise InputError(f"{where(pos)}: a ',' before ']' (trailing comma)")
        if char == "]":
            rest = text[pos + 1:]
            while not rest.strip() and not chars.eof:
                rest = chars.read()
            if rest.strip():
                raise InputError(f"{where(pos + 1)}: extra data after the array")
            return
        if after_value:
            if char != ",":
                raise InputError(f"{where(pos)}: expected ',' or ']' between records")
            pos += 1
            after_value = False
            continue
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if chars.eof:
                raise InputError(f"{where(exc.pos)}: {exc.msg}") from None
            value, end = _cut_element(chars, decoder, max_record, where, fill, lambda: (text, pos))
            if isinstance(value, OversizedRecord):
                text, pos = value.rest, 0
                yield index, OversizedRecord(value.size)
                index += 1
                after_value = True
                continue
        yield index, value
        index += 1
        pos = end
        after_value = True


def _cut_element(chars, decoder, max_record, where, fill, current):
    """Finish an element that the buffer cut: extend the buffer to its end (found by `_ValueEnd`) and
    parse it, or, beyond `max_record` characters, skip the rest of it keeping nothing."""
    text, pos = current()
    scanner = _ValueEnd()
    end = scanner.feed(text, pos)
    while end is None:
        if len(text) - pos > max_record:
            size = len(text) - pos
            while True:
                more = chars.read()
                if not more:
                    raise InputError(f"{chars.path}: invalid JSON: a record of more than {size:,} characters is cut "
                                     "short (truncated file?)")
                end = scanner.feed(more, 0)
                if end is not None:
                    return _Skipped(size + end, more[end:]), 0
                size += len(more)
        seen = len(text) - pos
        if not fill():
            raise InputError(f"{where(len(text))}: a record is cut short (truncated file?)")
        text, pos = current()
        end = scanner.feed(text, pos + seen)
    try:
        value, stop = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where(exc.pos)}: {exc.msg}") from None
    return value, stop


@dataclass(frozen=True)
class _Skipped(OversizedRecord):
    rest: str = ""  # what followed the skipped element in the chunk that held its end


def _iter_lines(chars: _Chars, text: str, max_record: int) -> Iterator[tuple[int, Any]]:
    """JSONL: one record per non-blank line; a line over `max_record` characters is skipped and reported."""
    index = 0
    lineno = 0
    while True:
        cut = text.find("\n")
        while cut < 0 and not chars.eof:
            if len(text) > max_record:  # an over-long line: drop it up to its end
                size = len(text)
                while True:
                    more = chars.read()
                    cut = more.find("\n")
                    size += len(more) if cut < 0 else cut
                    if cut >= 0 or not more:
                        break
                text = more[cut + 1:] if cut >= 0 else ""
                lineno += 1
                yield index, OversizedRecord(size)
                index += 1
                cut = text.find("\n")
                continue
            text += chars.read()
            cut = text.find("\n")
        if cut < 0:
            line, text = text, ""
        else:
            line, text = text[:cut], text[cut + 1:]
        lineno += 1
        if line.strip():
            if len(line) > max_record:
                yield index, OversizedRecord(len(line))
            else:
                try:
                    yield index, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{chars.path}: line {lineno} is not JSON ({exc.msg}); expected a JSON list or "
                                     "JSONL") from None
            index += 1
        if not text and chars.eof:
            return


def iter_records(path: str | os.PathLike, *, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, Any]]:
    """(index, record) for every element of a JSON array or line of a JSONL file, in bounded memory.

    A multi-GB array (LLaVA-OneVision's mixtures) streams: one element is parsed at a time; an element
    larger than `max_record_bytes` characters is skipped without being kept and comes out as an
    `OversizedRecord`. Regular files only (`llava_doctor.files`); anything unreadable is an InputError.
    """
    name = os.fspath(path)
    chars = _Chars(name)
    try:
        text = chars.read()
        while not text.strip() and not chars.eof:
            text += chars.read()
        stripped = text.lstrip()
        if not stripped:
            raise InputError(f"{name}: empty file (expected a JSON list or JSONL of conversations)")
        if stripped[0] == "[":
            yield from _iter_array(chars, text, max_record_bytes)
            return
        lines = _iter_lines(chars, text, max_record_bytes)
        head = list(itertools.islice(lines, 2))
        if len(head) == 1 and isinstance(head[0][1], dict) and "conversations" not in head[0][1]:
            raise InputError(f"{name}: a JSON object, not a list of conversations")
        yield from head
        yield from lines
    finally:
        chars.close()


def read_records(path: str | os.PathLike) -> list[Any]:
    """Every record of a JSON list or JSONL file (kept in memory: for a stream use `iter_records`)."""
    return [record for _, record in iter_records(path)]


def load_tokenizer(directory: str | os.PathLike, recipe: str | None = None, *, model_path: str | None = None) -> Any:
    """A tokenizer from a local directory only (never the hub), loaded the way the recipe's train.py
    loads it (`codebase.tokenizer_loading`: LLaVA asks for the slow SentencePiece class, LLaVA-NeXT
    decides by the model's name), judged on `model_path` (default: the directory's path)."""
    from pathlib import Path

    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: tokenizer directory not found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs: dict[str, Any] = {}
    if recipe is not None:
        from ..templates.codebase import tokenizer_loading

        kwargs = tokenizer_loading(recipe, model_path or str(d)).kwargs
    try:
        from transformers import AutoTokenizer

        from ..quiet import quiet_libraries

        with quiet_libraries():
            return AutoTokenizer.from_pretrained(str(d), local_files_only=True, **kwargs)
    except Exception as exc:  # transformers raises many kinds; all mean "unreadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"{d}: cannot load a tokenizer ({exc.__class__.__name__}: {first[:200]})") from None


def check_pad_token(tokenizer: Any, pad_token: str | None) -> None:
    """A `--pad-token` must name a token the tokenizer has (else its id is unk's or None: a usage error)."""
    if pad_token is None:
        return
    found = tokenizer.convert_tokens_to_ids(pad_token)
    if found is None or (found == tokenizer.unk_token_id and pad_token != tokenizer.unk_token):
        known = [t for t in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) if t]
        hint = f"; e.g. {', '.join(repr(t) for t in dict.fromkeys(known))}" if known else ""
        raise InputError(f"--pad-token {pad_token!r} is not a token of this tokenizer (it would get "
                         f"{'no id' if found is None else 'the unk id'}); name one it has{hint}")


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
    mm_use_im_start_end: bool = False
    encoder: Any = None  # shared across the chunks of one run (its cache and tokenizer facts)
    verifier: Any = None
    _analyses: list[SampleAnalysis] | None = None

    def analyses(self) -> list[SampleAnalysis]:
        if self._analyses is None:
            self._analyses = analyze(self.samples, self.tokenizer, self.template, self.recipe,
                                     max_length=self.max_length, image_features=self.image_features,
                                     encoder=self.encoder, verifier=self.verifier,
                                     mm_use_im_start_end=self.mm_use_im_start_end)
        return self._analyses


def build_dataset(name: str, records: Sequence[Any], tokenizer: Any, template: str, *, recipe: str = "llava",
                  pad_token: str | None = None, max_length: int | None = None,
                  image_features: int = DEFAULT_IMAGE_FEATURES, mm_use_im_start_end: bool = False,
                  mm_use_im_patch_token: bool = False, encoder: Any = None, verifier: Any = None,
                  max_sample_chars: int = 0, start: int = 0) -> Dataset:
    from ..templates.conversation import TEMPLATES
    from ..templates.recipes import CODEBASES, shared_setup, vision_for

    if template not in TEMPLATES and template != "v0.5":
        raise InputError(f"unknown template {template!r}; known: {', '.join(sorted(TEMPLATES))}")
    if recipe not in CODEBASES:
        raise InputError(f"unknown recipe {recipe!r}; known: {', '.join(CODEBASES)}")
    check_pad_token(tokenizer, pad_token)
    samples, problems = parse_records(records, start=start, max_sample_chars=max_sample_chars)
    try:
        configured = shared_setup(tokenizer, recipe, template, pad_token, max_length=max_length,
                                  vision=vision_for(mm_use_im_start_end, mm_use_im_patch_token))
    except Exception as exc:
        raise InputError(f"cannot set pad token {pad_token!r} on this tokenizer: {exc}") from None
    return Dataset(name, samples, configured, template, recipe, problems, max_length, image_features, pad_token,
                   tokenizer, mm_use_im_start_end, encoder, verifier)


def load_dataset(path: str | os.PathLike, tokenizer_dir: str | os.PathLike, template: str, **options: Any) -> Dataset:
    records = read_records(path)
    return build_dataset(str(path), records, load_tokenizer(tokenizer_dir, options.get("recipe")), template, **options)
