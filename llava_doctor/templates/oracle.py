"""The labels that should be learned, found without any of the training code's length arithmetic.

The answers' character spans (plus the end-of-turn text the template wants learned, e.g. ``</s>``
for v1, ``<|im_end|>`` for ChatML) are located in the text the model is fed; that text is
tokenized with offsets, and a token is supervised when its first non-blank character lies inside
such a span. Images split the text the way ``tokenizer_image_token`` does (or, for per-turn
recipes, the way a registered ``<image>`` special token does) and become IMAGE_TOKEN_INDEX.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from .conversation import GPT, IMAGE_TOKEN, Rendered, Template, render
from .tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoder

Range = tuple[int, int]


@dataclass
class OracleResult:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # (start, end) chars of each ground-truth range
    char_spans: list[tuple[int, int]] = field(default_factory=list)  # per token: (start, end) chars in `text`
    text: str = ""

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _first_visible(text: str, a: int, b: int) -> int:
    """Position of the first non-blank character of text[a:b] (a when it is all blank)."""
    pos = a
    while pos < b and text[pos].isspace():
        pos += 1
    return pos if pos < b else a


def _label_segment(out: OracleResult, encode: Encoder, text: str, base: int, special: bool, drop_first: bool,
                   ranges: list[Range], full_text: str) -> None:
    """Label one tokenized segment: a token is supervised when its first non-blank character lies in
    a range. Token positions are non-decreasing, so each range maps to one slice found by bisection."""
    enc = encode.encoded(text, special)
    ids, offsets = enc.ids, enc.offsets
    if drop_first:
        ids, offsets = ids[1:], offsets[1:]
    spans = [(base + s, base + e) for s, e in offsets]
    labels = [IGNORE_INDEX] * len(ids)
    if ranges:
        positions = [a if b <= a or not full_text[a].isspace() else _first_visible(full_text, a, b) for a, b in spans]
        for ra, rb in ranges:
            lo, hi = bisect_left(positions, ra), bisect_left(positions, rb)
            for k in range(lo, hi):
                if spans[k][1] > spans[k][0]:
                    labels[k] = ids[k]
    out.input_ids.extend(ids)
    out.char_spans.extend(spans)
    out.labels.extend(labels)


def _append_image(out: OracleResult, at: int) -> None:
    out.input_ids.append(IMAGE_TOKEN_INDEX)
    out.labels.append(IGNORE_INDEX)
    out.char_spans.append((at, at + len(IMAGE_TOKEN)))


def oracle_full_prompt(encode: Encoder, template: Template, messages: list[str], *, has_image: bool,
                       bos_id: int | None, rendered: Rendered | None = None) -> OracleResult:
    """Oracle labels for recipes that tokenize the whole rendered prompt at once."""
    rendered = rendered if rendered is not None else render(template, messages)
    text = rendered.text
    ranges = sorted((s.start, s.end_stop) for s in rendered.spans if s.role == GPT and s.end_stop > s.start)
    out = OracleResult(spans=ranges, text=text)
    if not has_image:
        _label_segment(out, encode, text, 0, True, False, ranges, text)
        return out
    chunks = text.split(IMAGE_TOKEN)
    first = encode(chunks[0])
    strip = bool(first) and bos_id is not None and first[0] == bos_id
    base = 0
    for k, chunk in enumerate(chunks):
        if k:
            _append_image(out, base)
            base += len(IMAGE_TOKEN)
        _label_segment(out, encode, chunk, base, True, strip and k > 0, ranges, text)
        base += len(chunk)
    return out


def oracle_per_turn(encode: Encoder, turn_texts: list[str], answers: list[tuple[int, str]], end_marker: str, *,
                    has_image: bool, drop_first_after_first: bool) -> OracleResult:
    """Oracle labels for recipes that tokenize each turn on its own (LLaVA-NeXT qwen / llama3).

    `answers` holds (turn index in `turn_texts`, answer text); the answer is searched for in that
    turn's text (the chat template may strip it) and extended by `end_marker` when it follows.
    """
    full = "".join(turn_texts)
    starts = []
    pos = 0
    for piece in turn_texts:
        starts.append(pos)
        pos += len(piece)
    ranges: list[Range] = []
    for k, answer in answers:
        piece = turn_texts[k]
        needle = answer  # verbatim first; chat templates that trim (Llama-3) need the stripped text
        at = piece.rfind(needle) if needle else -1
        if at < 0 and answer.strip():
            needle = answer.strip()
            at = piece.rfind(needle)
        if at < 0 or not needle:
            continue
        stop = at + len(needle)
        if end_marker and piece.startswith(end_marker, stop):
            stop += len(end_marker)
        ranges.append((starts[k] + at, starts[k] + stop))
    ranges.sort()
    out = OracleResult(spans=ranges, text=full)
    for k, piece in enumerate(turn_texts):
        pieces = piece.split(IMAGE_TOKEN) if has_image else [piece]
        base = starts[k]
        seg = OracleResult()
        for j, part in enumerate(pieces):
            if j:
                _append_image(seg, base)
                base += len(IMAGE_TOKEN)
            if part:
                _label_segment(seg, encode, part, base, False, False, ranges, full)
            base += len(part)
        if drop_first_after_first and k:
            seg.input_ids, seg.labels, seg.char_spans = seg.input_ids[1:], seg.labels[1:], seg.char_spans[1:]
        out.input_ids += seg.input_ids
        out.labels += seg.labels
        out.char_spans += seg.char_spans
    return out
