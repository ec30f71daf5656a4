"""The labels that should be learned, found without any of the training code's length arithmetic.

The answers' character spans (plus the end-of-turn text the template wants learned, e.g. ``</s>``
for v1, ``<|im_end|>`` for ChatML) are located in the text the model is fed; a token is supervised
when its first non-blank character lies inside such a span. The tokens are the ones the training
code feeds (the recipe's own tokenization, with character offsets), so an answer span maps to one
slice of positions found by bisection: the work per sample is per answer, not per token. Images
split the text the way ``tokenizer_image_token`` does (or, for per-turn recipes, the way a
registered ``<image>`` special token does) and become IMAGE_TOKEN_INDEX.
"""
from __future__ import annotations

from bisect import bisect_left
from operator import itemgetter
from typing import Callable, Sequence

from .conversation import GPT, IMAGE_TOKEN, Rendered
from .tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoder, PromptTokens

Range = tuple[int, int]
_start = itemgetter(0)


class OracleResult:
    """The supervised positions the answers call for; `char_spans` (per token) is built only on demand."""

    def __init__(self, input_ids: list[int], labels: list[int], spans: list[Range], text: str,
                 char_spans: list[Range] | Callable[[], list[Range]]) -> None:
        self.input_ids = input_ids
        self.labels = labels
        self.spans = spans  # (start, end) chars of each ground-truth range
        self.text = text
        self._char_spans = char_spans

    @property
    def char_spans(self) -> list[Range]:
        """Per token: (start, end) characters in `text`."""
        if callable(self._char_spans):
            self._char_spans = self._char_spans()
        return self._char_spans

    @property
    def supervised(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


def token_spans(prompt: PromptTokens) -> list[Range] | None:
    """Character span in the prompt of every position of ``prompt.ids()`` (None without offsets)."""
    encs = prompt.encodings
    if any(enc.offsets is None for enc in encs):
        return None
    if not prompt.image_split:
        return list(encs[0].offsets)
    first = encs[0].ids
    strip = 1 if first and prompt.bos_id is not None and first[0] == prompt.bos_id else 0
    out: list[Range] = [(0, 0)] if strip else []
    for k, ((start, _), enc) in enumerate(zip(prompt.chunks, encs)):
        if k:
            out.append((start - len(IMAGE_TOKEN), start))
        out.extend((start + s, start + e) for s, e in enc.offsets[strip:])
    return out


def label_ranges(labels: list[int], ids: Sequence[int], spans: Sequence[Range], ranges: Sequence[Range],
                 text: str) -> None:
    """Set labels[k] = ids[k] for every token whose first non-blank character lies in one of `ranges`.
    Token start positions never decrease, so each range is one slice found by bisection."""
    starts = [s for s, _ in spans]
    for ra, rb in ranges:
        lo = _first_at_or_after(starts, spans, ra, text)
        hi = _first_at_or_after(starts, spans, rb, text)
        for k in range(lo, hi):
            s, e = spans[k]
            if e > s and ids[k] != IMAGE_TOKEN_INDEX:
                labels[k] = ids[k]


def _first_at_or_after(starts: list[int], spans: Sequence[Range], pos: int, text: str) -> int:
    """The first token whose first non-blank character is at or after `pos` (a token that starts with
    blanks just before `pos` and whose first visible character is at or after it counts)."""
    k = bisect_left(starts, pos)
    if k > 0:
        s, e = spans[k - 1]
        if s < pos < e and not text[s:pos].strip() and text[s:e].strip():
            k -= 1
    return k


def answer_ranges(rendered: Rendered) -> list[Range]:
    return sorted((s.start, s.end_stop) for s in rendered.spans if s.role == GPT and s.end_stop > s.start)


def _layout(prompt: PromptTokens) -> list[tuple[int, int, int]]:
    """Per chunk: (its first character in the prompt, where its first kept token lands in
    ``prompt.ids()``, how many of its leading tokens are dropped)."""
    encs = prompt.encodings
    if not prompt.image_split:
        return [(0, 0, 0)]
    first = encs[0].ids
    strip = 1 if first and prompt.bos_id is not None and first[0] == prompt.bos_id else 0
    out, at = [], 0
    for k, ((start, _), enc) in enumerate(zip(prompt.chunks, encs)):
        drop = strip if k else 0
        if k:
            at += 1  # the image position before it
        out.append((start, at, drop))
        at += len(enc) - drop
    return out


def _first_in_prompt(prompt: PromptTokens, layout: list[tuple[int, int, int]], pos: int) -> int:
    """Index in ``prompt.ids()`` of the first token whose first non-blank character is at or after `pos`."""
    text = prompt.text
    for k in range(len(layout) - 1, -1, -1):
        start, at, drop = layout[k]
        if start <= pos or k == 0:
            piece = prompt.chunks[k][1]
            enc = prompt.encodings[k]
            local = max(0, pos - start)
            if local >= len(piece):
                return at + len(enc) - drop
            i = enc.first_at_or_after(local, drop, len(enc))
            if i > drop:
                s, e = enc.span(i - 1)
                if s < local < e and not text[start + s:pos].strip() and text[start + s:start + e].strip():
                    i -= 1
            return at + i - drop
    return 0


def oracle_full_prompt(prompt: PromptTokens, rendered: Rendered) -> OracleResult | None:
    """Oracle labels for recipes that tokenize the whole rendered prompt at once (the whole prompt,
    before any truncation). None when the tokenizer gives no character offsets."""
    encs = prompt.encodings
    if not all(enc.has_offsets for enc in encs):
        return None
    ids = prompt.ids()
    ranges = answer_ranges(rendered)
    labels = [IGNORE_INDEX] * len(ids)
    layout = _layout(prompt)
    for ra, rb in ranges:
        lo, hi = _first_in_prompt(prompt, layout, ra), _first_in_prompt(prompt, layout, rb)
        if hi > lo:
            labels[lo:hi] = ids[lo:hi]
    if IMAGE_TOKEN_INDEX in labels:
        labels = [IGNORE_INDEX if label == IMAGE_TOKEN_INDEX else label for label in labels]
    return OracleResult(ids, labels, ranges, prompt.text, lambda: token_spans(prompt))


def oracle_per_turn(encode: Encoder, turn_texts: list[str], answers: list[tuple[int, str]], end_marker: str, *,
                    replaced: int | None, drop_first_after_first: bool) -> OracleResult | None:
    """Oracle labels for recipes that tokenize each turn on its own (LLaVA-NeXT qwen / llama3), with
    the Encoder of the tokenizer they tokenize with (``<image>`` added when the sample has an image;
    `replaced` ids become IMAGE_TOKEN_INDEX).

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
    ids: list[int] = []
    spans: list[Range] = []
    for k, piece in enumerate(turn_texts):
        enc = encode.encoded(piece, False)
        if enc.offsets is None:
            return None
        base = starts[k]
        turn_ids = [IMAGE_TOKEN_INDEX if replaced is not None and t == replaced else t for t in enc.ids]
        turn_spans = [(base + s, base + e) for s, e in enc.offsets]
        if drop_first_after_first and k:
            turn_ids, turn_spans = turn_ids[1:], turn_spans[1:]
        ids += turn_ids
        spans += turn_spans
    labels = [IGNORE_INDEX] * len(ids)
    label_ranges(labels, ids, spans, ranges, full)
    return OracleResult(ids, labels, ranges, full, spans)
