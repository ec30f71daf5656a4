"""Batched, cached tokenization shared by the recipes, the oracle and the audit.

The training code calls ``tokenizer(text)`` once per round and per prompt; the audit asks for the
same texts but answers them from one batched call into the Rust tokenizer. An `Encoder` in
recording mode collects the texts a computation needs (returning empty placeholders); `prefetch`
then tokenizes them all at once, and the real computation runs from the cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
IMAGE_TOKEN = "<image>"


class Encoded:
    """One tokenized text. Ids and offsets are converted from the Rust encoding only when asked for:
    most texts of the training code's arithmetic are only ever counted."""

    __slots__ = ("_ids", "_offsets", "_source", "_len")

    def __init__(self, ids: list[int] | None, offsets: list[tuple[int, int]] | None = None, source: Any = None) -> None:
        self._ids = ids
        self._offsets = offsets
        self._source = source
        self._len = len(ids) if ids is not None else len(source)

    def __len__(self) -> int:
        return self._len

    @property
    def ids(self) -> list[int]:
        if self._ids is None:
            self._ids = list(self._source.ids)
        return self._ids

    @property
    def offsets(self) -> list[tuple[int, int]]:
        if self._offsets is None:
            self._offsets = list(self._source.offsets) if self._source is not None else [(0, 0)] * len(self.ids)
        return self._offsets


@dataclass
class Encoder:
    """tokenizer(text, add_special_tokens=...) with a cache and batch prefetch.

    Uses the Rust ``tokenizers.Tokenizer`` behind a fast transformers tokenizer directly when it is
    proven to give the same ids as the transformers call on a probe text; otherwise the
    transformers call (still batched).
    """

    tokenizer: Any
    recording: bool = False
    _cache: dict[tuple[str, bool], Encoded] = field(default_factory=dict)
    _wanted: dict[tuple[str, bool], None] = field(default_factory=dict)
    _rust: Any = None

    def __post_init__(self) -> None:
        rust = getattr(self.tokenizer, "_tokenizer", None)
        if rust is not None and hasattr(rust, "encode_batch") and self._rust_agrees(rust):
            self._rust = rust

    def _rust_agrees(self, rust: Any) -> bool:
        probe = " Hello</s> USER: a  b\n\nASSISTANT:<|im_end|>\n ü"
        try:
            for special in (True, False):
                mine = rust.encode(probe, add_special_tokens=special).ids
                theirs = list(self.tokenizer(probe, add_special_tokens=special)["input_ids"])
                if mine != theirs:
                    return False
        except Exception:
            return False
        return True

    def __call__(self, text: str, special: bool = True) -> list[int]:
        return self.encoded(text, special).ids

    def length(self, text: str, special: bool = True) -> int:
        return len(self.encoded(text, special))

    def starts_with(self, text: str, token: int | None) -> bool:
        enc = self.encoded(text, True)
        return token is not None and len(enc) > 0 and enc.ids[0] == token

    def encoded(self, text: str, special: bool = True) -> Encoded:
        key = (text, special)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self.recording:
            self._wanted[key] = None
            return Encoded([], [])
        self._fill([key])
        return self._cache[key]

    def prefetch(self, keys: Iterable[tuple[str, bool]] | None = None) -> None:
        """Tokenize every recorded (or given) text in one batched call per special-token setting."""
        keys = list(self._wanted) if keys is None else list(keys)
        self._wanted.clear()
        self._fill([k for k in dict.fromkeys(keys) if k not in self._cache])

    def _fill(self, keys: Sequence[tuple[str, bool]]) -> None:
        for special in (True, False):
            texts = [t for t, s in keys if s is special]
            if not texts:
                continue
            for text, enc in zip(texts, self._encode_batch(texts, special)):
                self._cache[(text, special)] = enc

    def _encode_batch(self, texts: list[str], special: bool) -> list[Encoded]:
        if self._rust is not None:
            return [Encoded(None, None, e) for e in self._rust.encode_batch(texts, add_special_tokens=special)]
        out = self.tokenizer(texts, add_special_tokens=special, return_offsets_mapping=getattr(self.tokenizer, "is_fast", False))
        offsets = out.get("offset_mapping") or [[(0, 0)] * len(ids) for ids in out["input_ids"]]
        return [Encoded(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(out["input_ids"], offsets)]

    def clear(self) -> None:
        self._cache.clear()


def image_token_ids(encode: Encoder, text: str, bos_id: int | None) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: tokenize the chunks around ``<image>`` separately (each with
    special tokens); when the first chunk starts with BOS keep it once and drop the first token of
    every chunk; one IMAGE_TOKEN_INDEX between chunks."""
    chunks = [encode(chunk) for chunk in text.split(IMAGE_TOKEN)]
    out: list[int] = []
    offset = 0
    if chunks and chunks[0] and bos_id is not None and chunks[0][0] == bos_id:
        offset = 1
        out.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            out.extend(([IMAGE_TOKEN_INDEX] * (offset + 1))[offset:])
        out.extend(chunk[offset:])
    return out


def image_token_length(encode: Encoder, text: str, bos_id: int | None) -> int:
    """len(image_token_ids(...)) without building the list."""
    chunks = text.split(IMAGE_TOKEN)
    strip = 1 if encode.starts_with(chunks[0], bos_id) else 0
    return strip + sum(max(0, encode.length(c) - strip) for c in chunks) + (len(chunks) - 1)


def special_split_ids(encode: Encoder, text: str, image_id: int) -> list[int]:
    """Token ids of `text` (no special tokens added) when ``<image>`` is a registered special token:
    the tokenizer splits on it first, so the pieces are tokenized independently."""
    out: list[int] = []
    for i, piece in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            out.append(image_id)
        if piece:
            out.extend(encode(piece, False))
    return out
