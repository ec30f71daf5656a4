"""Tokenization shared by the recipes, the oracle and the audit: every distinct text once, batched,
and the lengths of a prompt's pieces derived from the prompt's own tokenization where that is exact.

The training code tokenizes the whole prompt, then every round and every instruction on its own
(``len(tokenizer(rou).input_ids)``). Tokenizing those pieces again would cost two to three times
the prompt. `PromptTokens` instead derives a piece's length alone from the prompt's tokenization:

    len(alone(text[a:b])) = specials added by the tokenizer + len(alone(head)) + tokens of the
                            prompt between h and t + len(tail tokenized after a boundary)

where h is the first and t the last *hard boundary* inside the piece: a position at which this
tokenizer provably never merges across - the edges of added (special) tokens, which every
tokenizer splits off before anything else, and, for tokenizers proven *unit-local*
(`unit_locality`), a space that follows a non-space. The head and the tail are short, repeated
texts ("USER:", " "), tokenized once and cached. Where a boundary is missing, or the prompt's
tokenization does not split there, the piece is tokenized exactly. `Encoder(derive=False)` is the
exact path; the audit proves the two equal on its first samples and on a sample of the rest
(`Verifier`), and so do the tests on the golden cases.
"""
from __future__ import annotations

import json
import os
import re
from bisect import bisect_left
from itertools import accumulate
from operator import itemgetter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
IMAGE_TOKEN = "<image>"
_UNIT_START = re.compile(r"(?<=\S) ")
_start = itemgetter(0)
_LOCALITY: dict[int, tuple[Any, str | None]] = {}


def positions(ids: list[int], token: int, start: int = 0, stop: int | None = None) -> list[int]:
    """Every position of `token` in ids[start:stop] (list.index jumps, not a loop over the tokens)."""
    out: list[int] = []
    stop = len(ids) if stop is None else stop
    at = start - 1
    while True:
        try:
            at = ids.index(token, at + 1, stop)
        except ValueError:
            return out
        out.append(at)


class Encoded:
    """One tokenized text. Ids and offsets are converted from the Rust encoding only when asked for."""

    __slots__ = ("_ids", "_offsets", "_source", "_len", "_empty")

    def __init__(self, ids: list[int] | None, offsets: list[tuple[int, int]] | None = None, source: Any = None) -> None:
        self._ids = ids
        self._offsets = offsets
        self._source = source
        self._len = len(ids) if ids is not None else len(source)
        self._empty: bool | None = None

    def __len__(self) -> int:
        return self._len

    @property
    def ids(self) -> list[int]:
        if self._ids is None:
            self._ids = self._source.ids
        return self._ids

    @property
    def offsets(self) -> list[tuple[int, int]] | None:
        if self._offsets is None and self._source is not None:
            self._offsets = self._source.offsets
        return self._offsets

    @property
    def has_offsets(self) -> bool:
        return self._source is not None or self._offsets is not None

    def span(self, i: int) -> tuple[int, int]:
        """Characters of token i (from the Rust encoding directly, without converting every offset)."""
        if self._offsets is None and self._source is not None:
            found = self._source.token_to_chars(i)
            return found if found is not None else (0, 0)
        return self.offsets[i]

    def first_at_or_after(self, p: int, lo: int, hi: int) -> int:
        """bisect_left over the token start offsets in [lo, hi): the first token starting at or after p."""
        if self._offsets is None and self._source is not None:
            i = self._source.char_to_token(p)
            if i is not None and lo <= i < hi:
                s, _ = self._source.token_to_chars(i)
                return i if s >= p else i + 1
        offsets = self.offsets
        return bisect_left(offsets, p, lo, hi, key=_start) if offsets is not None else hi

    def split_at(self, p: int, lo: int, hi: int) -> int | None:
        """Index of the first token at or after character p, when the tokenization splits exactly at p."""
        source = self._source
        if self._offsets is None and source is not None:
            i = source.char_to_token(p)
            if i is not None and lo <= i < hi:  # the token holding p must start at p, its predecessor end by p
                if (source.token_to_chars(i) or (0, 0))[0] != p:
                    return None
                return None if i > lo and (source.token_to_chars(i - 1) or (0, 0))[1] > p else i
        i = self.first_at_or_after(p, lo, hi)
        if i < hi and self.span(i)[0] != p:
            return None
        if i > lo and self.span(i - 1)[1] > p:
            return None
        return i


def unit_locality(tokenizer: Any) -> str | None:
    """Why the tokenizer never merges across a space that follows a non-space (None: not proven).

    Proven structurally from the fast tokenizer's pipeline: a Metaspace pre-tokenizer that splits
    on the space marker, GPT-2 style ByteLevel or Split regexes that start a pre-token at such a
    space, or a SentencePiece-style BPE whose vocabulary has no piece with a space marker after
    another character (BPE can then never merge across that position)."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is not None:
        return _rust_unit_locality(rust)
    sp = getattr(tokenizer, "sp_model", None)
    try:
        pieces = sp.id_to_piece(list(range(sp.get_piece_size()))) if sp is not None else []
    except Exception:
        return None
    if _no_piece_crosses_a_word_start(pieces):
        return "SentencePiece vocabulary without a piece that crosses a word start"
    return None


def _no_piece_crosses_a_word_start(pieces: Iterable[str]) -> bool:
    """Some piece holds the space marker, and none holds it after another character (`p.lstrip(marker)`
    keeps a marker exactly when one follows a character that is not a marker)."""
    marker = "\u2581"
    pieces = list(pieces)
    return any(marker in p for p in pieces) and not any(marker in p.lstrip(marker) for p in pieces)


def _rust_unit_locality(rust: Any) -> str | None:
    try:
        pre = json.loads(rust.pre_tokenizer.__getstate__()) if rust.pre_tokenizer is not None else {}
    except Exception:
        return None
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for part in parts:
        kind = part.get("type")
        if kind == "ByteLevel" and part.get("use_regex", True):
            return "ByteLevel pre-tokenizer (GPT-2 regex: a space starts a pre-token)"
        if kind == "Split" and part.get("behavior") == "Isolated":
            pattern = (part.get("pattern") or {}).get("Regex", "")
            if r"\s+(?!\S)" in pattern and (r"[^\r\n\p{L}\p{N}]?\p{L}+" in pattern or r" ?\p{L}+" in pattern):
                return "Split pre-tokenizer with a GPT-style regex (a space starts a pre-token)"
        if kind == "Metaspace" and part.get("split", True):
            return "Metaspace pre-tokenizer splitting on the space marker"
        if kind == "WhitespaceSplit" or kind == "Whitespace":
            return f"{kind} pre-tokenizer"
    kind = type(rust.model).__name__
    if kind not in ("BPE", "Unigram"):
        return None
    try:
        pieces = rust.get_vocab(with_added_tokens=False)  # the vocabulary: only when no pre-tokenizer decides
    except Exception:
        return None
    if _no_piece_crosses_a_word_start(pieces):
        return f"{kind} vocabulary without a piece that crosses a word start"
    return None


@dataclass
class Encoder:
    """tokenizer(text, add_special_tokens=...) with a cache and batch prefetch.

    Uses the Rust ``tokenizers.Tokenizer`` behind a fast transformers tokenizer directly when it gives
    the same ids as the transformers call on a probe text; otherwise the transformers call (batched
    where the tokenizer allows). `derive` enables the derived piece lengths of `PromptTokens`.
    """

    tokenizer: Any
    recording: bool = False
    derive: bool = True
    note_exact: bool = False  # derived lengths also queue the texts the exact path would tokenize (`Verifier`)
    threads: int | None = None  # threads one SentencePiece batch may use (None: the library's default, every core)
    _cache: dict[tuple[str, bool], Encoded] = field(default_factory=dict)
    _wanted: dict[tuple[str, bool], None] = field(default_factory=dict)
    _rust: Any = None
    _facts: Any = None
    _pieces: Any = None
    _twin: Any = None
    _twin_checked: int = 0
    memo: dict = field(default_factory=dict)  # per-sample work shared by the recording and the real pass

    def __post_init__(self) -> None:
        rust = getattr(self.tokenizer, "_tokenizer", None)
        if rust is not None and hasattr(rust, "encode_batch") and self._rust_agrees(rust):
            self._rust = rust

    def _rust_agrees(self, rust: Any) -> bool:
        probe = " Hello</s> USER: a  b\n\nASSISTANT:<|im_end|>\n ü<s>x"
        try:
            for special in (True, False):
                if rust.encode(probe, add_special_tokens=special).ids != \
                        list(self.tokenizer(probe, add_special_tokens=special)["input_ids"]):
                    return False
        except Exception:
            return False
        return True

    @property
    def facts(self) -> "TokenizerShape":
        if self._facts is None:
            self._facts = TokenizerShape.of(self)
        return self._facts

    def __call__(self, text: str, special: bool = True) -> list[int]:
        return self.encoded(text, special).ids

    def length(self, text: str, special: bool = True) -> int:
        return len(self.encoded(text, special))

    def starts_with(self, text: str, token: int | None) -> bool:
        enc = self.encoded(text, True)
        return token is not None and len(enc) > 0 and enc.ids[0] == token

    def want(self, text: str, special: bool = True) -> None:
        key = (text, special)
        if key not in self._cache:
            self._wanted[key] = None

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
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        if fast:
            out = self.tokenizer(texts, add_special_tokens=special, return_offsets_mapping=True)
            offsets = out.get("offset_mapping")
            return [Encoded(list(ids), [tuple(o) for o in offsets[k]] if offsets else None)
                    for k, ids in enumerate(out["input_ids"])]
        if self._pieces is None:
            self._pieces = SlowPieces.of(self.tokenizer)
        added = self._pieces.added_counts(special)
        return [Encoded(list(ids), self._pieces.offsets(text, list(ids), *added))
                for text, ids in zip(texts, self._slow_ids(texts, special))]

    def _slow_ids(self, texts: list[str], special: bool) -> list[list[int]]:
        """The slow tokenizer's ids: from its `SentencePieceTwin` while that keeps agreeing with it
        (all of the first 256 texts, then every 64th), else from the tokenizer itself."""
        if self._twin is None:
            self._twin = SentencePieceTwin.of(self.tokenizer, self.threads) or False
        if self._twin is False:
            return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]
        ids = self._twin.encode_batch(texts, special)
        seen = self._twin_checked
        checks = [k for k in range(len(texts)) if seen + k < 256 or (seen + k) % 64 == 0]
        self._twin_checked += len(texts)
        if checks:
            real = self.tokenizer([texts[k] for k in checks], add_special_tokens=special)["input_ids"]
            if any(list(r) != ids[k] for k, r in zip(checks, real)):
                self._twin = False
                return [list(x) for x in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]
        return ids

    def forget(self) -> None:
        """Drop the per-sample texts of a finished chunk; keep the short probes every chunk reuses.
        In place: the views made by `with_tokenizer` share the cache, which must not keep growing.
        Every chunk: a slow tokenizer's offsets are ~150 tuples per text, which the audit's one
        garbage collection per chunk would otherwise walk."""
        self.memo.clear()
        for key in [key for key in self._cache if len(key[0]) > 64]:
            del self._cache[key]

    def clear(self) -> None:
        self._cache.clear()

    def with_tokenizer(self, tokenizer: Any) -> "Encoder":
        """This encoder (cache, Rust backend, facts) for a view of the same tokenizer (`PadView`)."""
        twin = Encoder.__new__(Encoder)
        twin.__dict__.update(self.__dict__)
        twin.tokenizer = tokenizer
        twin.recording = False
        twin._wanted = {}
        return twin

    def prompt(self, text: str, image_split: bool, bos_id: int | None) -> "PromptTokens":
        return PromptTokens(self, text, image_split, bos_id)


class SentencePieceTwin:
    """The slow (Python) SentencePiece tokenizer of transformers 4 - what LLaVA's train.py loads with
    ``use_fast=False`` - re-expressed over its own SentencePiece model: split on added tokens (one
    regex, leftmost-longest like the tokenizer's trie), the ``legacy`` / prefix rules of
    ``LlamaTokenizer.tokenize``, then one batched SentencePiece call for every piece of every text.
    It is only used once it gave the slow tokenizer's own ids on the first texts, and it keeps being
    checked on a sample of the rest (`Encoder`); the first difference retires it."""

    MARK = "\u2581"

    def __init__(self, tokenizer: Any, threads: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.sp = tokenizer.sp_model
        self.threads = threads if threads is not None else (1 if _parallelism_off() else None)
        self.legacy = bool(tokenizer.legacy)
        self.bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) else []
        self.eos = [tokenizer.eos_token_id] if getattr(tokenizer, "add_eos_token", False) else []
        self.added = {str(t): int(i) for t, i in tokenizer.get_added_vocab().items()}
        self.specials = {self.added[t] for t in getattr(tokenizer, "all_special_tokens", []) if t in self.added}
        contents = sorted(self.added, key=len, reverse=True)
        self.split = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None
        self.unk_prefix = str(tokenizer.unk_token)
        self.unk_length = len(self.sp.encode(self.unk_prefix))
        self.mark_id = self.sp.piece_to_id(self.MARK)
        self.prefix_space = getattr(tokenizer, "add_prefix_space", True) is not False

    @classmethod
    def of(cls, tokenizer: Any, threads: int | None = None) -> "SentencePieceTwin | None":
        """A twin for LlamaTokenizer-like slow tokenizers whose added tokens strip nothing; else None."""
        if getattr(tokenizer, "is_fast", True) or not hasattr(tokenizer, "sp_model") or not hasattr(tokenizer, "legacy"):
            return None
        if type(getattr(tokenizer, "base", tokenizer)).tokenize is _plain_tokenize() or \
                getattr(tokenizer, "do_lower_case", False):
            return None
        try:
            decoder = tokenizer.added_tokens_decoder
            if any(getattr(t, "lstrip", False) or getattr(t, "rstrip", False) or getattr(t, "single_word", False)
                   for t in decoder.values()):
                return None
            return cls(tokenizer, threads)
        except Exception:
            return None

    def encode_batch(self, texts: list[str], special: bool) -> list[list[int]]:
        plans: list[list[Any]] = []
        wanted: list[str] = []
        for text in texts:
            if not self.legacy and text:
                text = (self.MARK if self.prefix_space else "") + text.replace(self.MARK, " ")
            plan: list[Any] = []
            for k, piece in enumerate(self.split.split(text) if self.split is not None else [text]):
                if not piece:
                    continue
                if k % 2 == 1 and self.split is not None:
                    plan.append(self.added[piece])
                    continue
                strip = not self.legacy and piece.startswith((self.MARK, " "))
                plan.append((len(wanted), strip))
                wanted.append(self.unk_prefix + piece if strip else piece)
            plans.append(plan)
        encoded = self._sp_encode(wanted) if wanted else []
        out = []
        for plan in plans:
            ids: list[int] = []
            for step in plan:
                if isinstance(step, int):
                    ids.append(step)
                else:
                    part = encoded[step[0]]
                    ids.extend(part[self.unk_length:] if step[1] and len(part) >= self.unk_length else part)
            if not self.legacy and len(ids) > 1 and ids[0] == self.mark_id and ids[1] in self.specials:
                ids = ids[1:]
            out.append(self.bos + ids + self.eos if special else ids)
        return out

    def _sp_encode(self, texts: list[str]) -> list[list[int]]:
        if self.threads is None:
            return self.sp.encode(texts)
        try:
            return self.sp.encode(texts, num_threads=self.threads)
        except TypeError:  # a SentencePiece without threaded batches
            return self.sp.encode(texts)


def _parallelism_off() -> bool:
    """``TOKENIZERS_PARALLELISM`` set to false (read as the Rust tokenizers read it): their batches then
    run on one thread, and so do the SentencePiece batches that stand in for them."""
    value = os.environ.get("TOKENIZERS_PARALLELISM")
    return value is not None and value.strip().lower() in ("", "off", "false", "f", "no", "n", "0")


def _plain_tokenize() -> Any:
    from transformers import PreTrainedTokenizer

    return PreTrainedTokenizer.tokenize


class SlowPieces:
    """Character offsets for a slow (Python, SentencePiece) tokenizer, which gives none: its pieces are
    walked along the text (the space marker stands for a space or for the prefix SentencePiece adds,
    byte pieces ``<0xNN>`` make up one character together, added tokens match their own text). A
    piece that does not line up gives no offsets for that text (the audit then tokenizes exactly).
    Where the pieces simply spell the text, `_tiled` finds the same offsets with list-wide operations."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        try:
            self.added = {int(i): str(t) for t, i in tokenizer.get_added_vocab().items()}
        except Exception:
            self.added = {}
        self.unk = getattr(tokenizer, "unk_token_id", None)
        self._counts: dict[bool, tuple[int, int]] = {}
        self._spelling: list[str | None] | None = None

    @classmethod
    def of(cls, tokenizer: Any) -> "SlowPieces":
        return cls(tokenizer)

    def added_counts(self, special: bool) -> tuple[int, int]:
        """(tokens added before, after) the text by the tokenizer for this setting."""
        if special not in self._counts:
            plain = list(self.tokenizer("a", add_special_tokens=False)["input_ids"])
            full = list(self.tokenizer("a", add_special_tokens=special)["input_ids"])
            prefix = next((k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), 0)
            self._counts[special] = (prefix, max(0, len(full) - len(plain) - prefix))
        return self._counts[special]

    def _pieces_of(self, ids: list[int]) -> list[str]:
        sp = getattr(self.tokenizer, "sp_model", None)
        if sp is not None:
            size = sp.get_piece_size()
            try:
                return [self.added[i] if i in self.added or i >= size else p
                        for i, p in zip(ids, sp.id_to_piece([i if i < size else 0 for i in ids]))]
            except Exception:
                pass
        return self.tokenizer.convert_ids_to_tokens(ids)

    def offsets(self, text: str, ids: list[int], prefix: int, suffix: int) -> list[tuple[int, int]] | None:
        byte_decoder = getattr(self.tokenizer, "byte_decoder", None)
        if isinstance(byte_decoder, dict):
            return self._byte_level(text, ids, prefix, suffix, byte_decoder)
        tiled = self._tiled(text, ids, prefix, suffix)
        return tiled if tiled is not None else self._walk(text, ids, prefix, suffix)

    def _spellings(self) -> list[str | None]:
        """Per id, the text its piece spells: the space marker as a space, an ASCII byte piece as its
        character, an added token as its content; None for unk and for the bytes of a longer character."""
        if self._spelling is None:
            sp = getattr(self.tokenizer, "sp_model", None)
            table: list[str | None] = []
            if sp is not None:
                for piece in sp.id_to_piece(list(range(sp.get_piece_size()))):
                    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                        code = int(piece[3:5], 16)
                        table.append(chr(code) if code < 0x80 else None)
                    else:
                        table.append(piece.replace("\u2581", " "))
            if self.added:
                table += [None] * (max(self.added) + 1 - len(table))
                for token, content in self.added.items():
                    table[token] = content
            if self.unk is not None and 0 <= self.unk < len(table):
                table[self.unk] = None
            self._spelling = table
        return self._spelling

    def _tiled(self, text: str, ids: list[int], prefix: int, suffix: int) -> list[tuple[int, int]] | None:
        """The walk's offsets where the pieces spell the text one after the other (None elsewhere: the
        walk decides), with list-wide operations instead of a Python step per token: each piece's text,
        the space SentencePiece prefixes to every text it encodes (the text's start, and after an
        added token) dropped where the text has none, then one comparison of the joined pieces."""
        body = ids[prefix:len(ids) - suffix]
        table = self._spellings()
        try:
            spelled = list(map(table.__getitem__, body))
        except (IndexError, TypeError):
            return None
        if not table or None in spelled:
            return None
        starts = {0}
        for token in self.added:
            if token in body:
                starts.update(k + 1 for k in positions(body, token))
        ends = list(accumulate(map(len, spelled)))
        dropped = 0
        for k in sorted(starts):
            if k < len(spelled) and spelled[k].startswith(" "):
                at = (ends[k - 1] if k else 0) - dropped
                if not text.startswith(" ", at):
                    spelled[k] = spelled[k][1:]
                    dropped += 1
        if dropped:
            ends = list(accumulate(map(len, spelled)))
        if "".join(spelled) != text:
            return None
        size = len(text)
        return [(0, 0)] * prefix + list(zip([0] + ends[:-1], ends)) + [(size, size)] * suffix

    def _walk(self, text: str, ids: list[int], prefix: int, suffix: int) -> list[tuple[int, int]] | None:
        pieces = self._pieces_of(ids)
        out: list[tuple[int, int]] = [(0, 0)] * prefix
        pos = 0
        pending: list[int] = []
        waiting = 0
        end = len(ids) - suffix
        for k in range(prefix, end):
            token, piece = ids[k], pieces[k]
            if token in self.added and token != self.unk:
                content = self.added[token]
                at = text.find(content, pos)
                if at < 0 or text[pos:at].strip():
                    return None
                out.append((at, at + len(content)))
                pos = at + len(content)
                continue
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                pending.append(int(piece[3:5], 16))
                waiting += 1
                try:
                    char = bytes(pending).decode("utf-8")
                except UnicodeDecodeError:
                    if len(pending) >= 4:
                        return None
                    continue
                if text[pos:pos + len(char)] != char:
                    return None
                out.extend([(pos, pos + len(char))] * waiting)
                pos += len(char)
                pending, waiting = [], 0
                continue
            if pending or token == self.unk or piece is None:
                return None
            chars = piece.replace("\u2581", " ")
            if chars.startswith(" ") and not text.startswith(" ", pos):
                chars = chars[1:]  # the prefix SentencePiece adds, no character of the text
            if not text.startswith(chars, pos):
                return None
            out.append((pos, pos + len(chars)))
            pos += len(chars)
        if pending or text[pos:].strip():
            return None
        out.extend([(len(text), len(text))] * suffix)
        return out

    def _byte_level(self, text: str, ids: list[int], prefix: int, suffix: int,
                    byte_decoder: dict) -> list[tuple[int, int]] | None:
        """GPT-2 style byte-level pieces: each piece is bytes; a token ending inside a character
        spans that character, as the Rust tokenizers report it."""
        import codecs

        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        out: list[tuple[int, int]] = [(0, 0)] * prefix
        decoder = codecs.getincrementaldecoder("utf-8")()
        pos = 0  # characters decoded so far
        start = 0  # where the current token starts (inside a character when bytes are pending)
        for k in range(prefix, len(ids) - suffix):
            token, piece = ids[k], pieces[k]
            if token in self.added:
                content = self.added[token]
                if decoder.getstate()[0] or not text.startswith(content, pos):
                    return None
                out.append((pos, pos + len(content)))
                pos = start = pos + len(content)
                continue
            try:
                chars = decoder.decode(bytes(byte_decoder[c] for c in piece))
            except (KeyError, UnicodeDecodeError):
                return None
            if chars and not text.startswith(chars, pos):
                return None
            pos += len(chars)
            partial = bool(decoder.getstate()[0])
            out.append((start, pos + (1 if partial else 0)))
            start = pos
        if decoder.getstate()[0] or pos != len(text):
            return None
        out.extend([(len(text), len(text))] * suffix)
        return out


@dataclass(frozen=True)
class TokenizerShape:
    """What the derivation needs to know about the tokenizer (computed once per Encoder)."""

    prefix: int  # tokens the tokenizer adds before the text (BOS)
    suffix: int  # ... and after it (EOS)
    first_added: int | None  # the id it adds first (the BOS), if any
    added_ids: frozenset  # ids of added tokens, which the tokenizer splits off before anything else
    unit_local: str | None  # `unit_locality` proof, or None
    faithful: bool = True  # character offsets tile the text (no trimmed, zero-width or overlapping tokens)

    @classmethod
    def of(cls, encode: Encoder) -> "TokenizerShape":
        tok = encode.tokenizer
        plain = encode("a", False)
        full = encode("a", True)
        prefix = next((k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), 0)
        suffix = max(0, len(full) - len(plain) - prefix)
        try:
            added = frozenset(int(i) for i in tok.get_added_vocab().values())
        except Exception:
            added = frozenset(getattr(tok, "all_special_ids", ()) or ())
        backend = getattr(tok, "_tokenizer", None) or getattr(tok, "sp_model", None)
        cached = _LOCALITY.get(id(backend))
        if cached is None or cached[0] is not backend:
            cached = _LOCALITY[id(backend)] = (backend, unit_locality(tok))
        return cls(prefix, suffix, full[0] if prefix else None, added, cached[1], _offsets_tile(encode))


_TILING_PROBE = "Hi there.  Yes. \n\n  a\tb \u00e9\u732b \U0001f431x{special} end  "


def _offsets_tile(encode: Encoder) -> bool:
    """Whether this tokenizer's offsets cover the text exactly, token after token (what the derived
    lengths count on). Trimmed offsets (a whitespace token at zero width, as GPT-NeoX's ByteLevel
    gives under tokenizers 0.15) fail, and the audit then tokenizes every round exactly."""
    try:
        added = sorted(encode.tokenizer.get_added_vocab())
    except Exception:
        added = []
    text = _TILING_PROBE.format(special=added[0] if added else "")
    enc = encode.encoded(text, False)
    offsets = enc.offsets
    if offsets is None:
        return False
    pos = start = 0
    for s, e in offsets:
        # no empty token, no gap, never backwards (byte-level tokens may share a character's span)
        if e <= s or s > pos or s < start or e < pos:
            return False
        pos, start = e, s
    return pos == len(text)


class PromptTokens:
    """A prompt as the training code tokenizes it (``tokenizer(prompt)`` or ``tokenizer_image_token``),
    and the lengths of its pieces tokenized alone, derived from it where exact."""

    __slots__ = ("encode", "text", "image_split", "bos_id", "chunks", "shape", "_encs", "_edges", "_starts")

    def __init__(self, encode: Encoder, text: str, image_split: bool, bos_id: int | None) -> None:
        self.encode = encode
        self.text = text
        self.image_split = image_split
        self.bos_id = bos_id
        if image_split and IMAGE_TOKEN in text:
            chunks, pos = [], 0
            for piece in text.split(IMAGE_TOKEN):
                chunks.append((pos, piece))
                pos += len(piece) + len(IMAGE_TOKEN)
            self.chunks = chunks
        else:
            self.chunks = [(0, text)]
        self._encs: list[Encoded] | None = None
        self._edges: list[tuple[list[tuple[int, int]], list[int]] | None] = [None] * len(self.chunks)
        self._starts: dict[int, tuple | None] = {}
        if encode.recording:  # the shape is known once the recorded texts are tokenized
            self.shape: TokenizerShape | None = None
            for _, piece in self.chunks:
                encode.want(piece)
        else:
            self.shape = encode.facts

    @property
    def encodings(self) -> list[Encoded]:
        if self._encs is None:
            self._encs = [self.encode.encoded(piece) for _, piece in self.chunks]
        return self._encs

    def ids(self) -> list[int]:
        """``tokenizer(prompt).input_ids``, or ``tokenizer_image_token(prompt)``: each chunk around
        ``<image>`` tokenized alone; when the first starts with BOS, it is kept once and the first
        token of every chunk dropped; one IMAGE_TOKEN_INDEX between chunks."""
        encs = self.encodings
        if len(encs) == 1:
            return list(encs[0].ids)
        first = encs[0].ids
        strip = 1 if first and self.bos_id is not None and first[0] == self.bos_id else 0
        out: list[int] = [first[0]] if strip else []
        for k, enc in enumerate(encs):
            if k:
                out.append(IMAGE_TOKEN_INDEX)
            out.extend(enc.ids[strip:] if strip else enc.ids)
        return out

    def alone_image(self, a: int, b: int) -> int:
        """``len(tokenizer_image_token(prompt[a:b]))``."""
        if self.encode.recording:
            return 0
        text = self.text
        cut = text.find(IMAGE_TOKEN, a, b)
        if cut < 0:
            return self.alone(a, b)  # one chunk: its BOS (if any) is kept
        parts = []
        pos = a
        while cut >= 0:
            parts.append((pos, cut))
            pos = cut + len(IMAGE_TOKEN)
            cut = text.find(IMAGE_TOKEN, pos, b)
        parts.append((pos, b))
        strip = 1 if self.bos_id is not None and self._alone_first_id(*parts[0]) == self.bos_id else 0
        total = strip + len(parts) - 1
        for x, y in parts:
            n = self.alone(x, y) - strip
            if n > 0:
                total += n
        return total

    def _alone_first_id(self, a: int, b: int) -> int | None:
        shape = self.shape
        if shape.prefix:
            return shape.first_added
        ids = self.encode(self.text[a:min(b, a + 64)])  # no added prefix: the text's own first token
        return ids[0] if ids else None

    def alone(self, a: int, b: int) -> int:
        """``len(tokenizer(prompt[a:b]).input_ids)`` (with special tokens)."""
        encode = self.encode
        if encode.recording:
            return 0
        derived = self._derived(a, b) if encode.derive and self.shape.faithful else None
        if derived is None:
            return encode.length(self.text[a:b])
        if encode.note_exact:
            encode.want(self.text[a:b])
        return derived

    # -- derivation ---------------------------------------------------------------------------------

    def _specials(self, k: int) -> tuple[list[tuple[int, int]], list[int]]:
        """Character spans of the added tokens in chunk k (the tokenizer splits them off first), and their edges."""
        found = self._edges[k]
        if found is None:
            enc = self.encodings[k]
            shape = self.shape
            ids = enc.ids
            stop = len(ids) - shape.suffix
            found_at: list[int] = []
            added = shape.added_ids
            for token in (added if len(added) <= 8 else added.intersection(ids)):
                if token in ids:
                    found_at += positions(ids, token, shape.prefix, stop)
            spans = [enc.span(i) for i in sorted(found_at)]
            found = self._edges[k] = (spans, sorted({e for span in spans for e in span}))
        return found

    def _boundary_after(self, edges: list[int], piece: str, x: int, limit: int) -> int | None:
        """The first hard boundary in (x, limit] (`edges`: those of the chunk's added tokens)."""
        best = limit + 1
        if self.shape.unit_local:
            found = _UNIT_START.search(piece, x + 1, limit + 1)
            if found is not None:
                best = found.start()
        if edges:
            i = bisect_left(edges, x + 1)
            if i < len(edges) and edges[i] < best:
                best = edges[i]  # no added token is cut by x or y (checked by the caller)
        if limit == len(piece):
            best = min(best, limit)
        return best if best <= limit else None

    def _boundary_before(self, edges: list[int], piece: str, y: int, floor: int) -> int:
        """The last hard boundary in [floor, y] (y itself when it is one)."""
        if y == len(piece):
            return y
        best = floor
        if edges:
            i = bisect_left(edges, y + 1) - 1
            if i >= 0 and edges[i] >= floor:
                best = edges[i]
        if self.shape.unit_local:
            q = piece.rfind(" ", max(floor, best + 1), y + 1)
            while q > 0 and piece[q - 1].isspace():
                q = piece.rfind(" ", max(floor, best + 1), q)
            if q > best and q > 0:
                best = q
        return best

    def _start_side(self, a: int) -> tuple | None:
        """What every piece starting at `a` shares (cached): its chunk, the first hard boundary h after
        it, the prompt's token index at h, the head's length alone (pieces of one round start alike)."""
        chunks = self.chunks
        k = 0
        while k + 1 < len(chunks) and chunks[k + 1][0] <= a:
            k += 1
        start, piece = chunks[k]
        x = a - start
        enc = (self._encs or self.encodings)[k]
        found = None
        if 0 <= x <= len(piece) and enc.has_offsets:
            spans, edges = self._specials(k)
            if not any(s < x < e for s, e in spans):
                h = self._boundary_after(edges, piece, x, len(piece))
                if h is not None and h > x:
                    shape = self.shape
                    n_end = len(enc) - shape.suffix
                    ih = enc.split_at(h, shape.prefix, n_end) if h < len(piece) else n_end
                    if ih is not None:
                        found = (start, piece, enc, x, h, ih, spans, edges, n_end,
                                 self.encode.length(piece[x:h]))
        self._starts[a] = found
        return found

    def _derived(self, a: int, b: int) -> int | None:
        starts = self._starts
        side = starts[a] if a in starts else self._start_side(a)
        if side is None:
            return None
        start, piece, enc, x, h, ih, spans, edges, n_end, head = side
        y = b - start
        size = len(piece)
        if y > size or y <= x:
            return None
        if x == 0 and y == size:
            return len(enc)
        if h > y:
            return None  # no hard boundary inside the piece
        for s, e in spans:
            if s < y < e:
                return None  # the piece cuts an added token: alone, its text is no token
        if y == size:
            return head + (n_end - ih)
        t = self._boundary_before(edges, piece, y, h)
        it = enc.split_at(t, self.shape.prefix, n_end)
        if it is None or it < ih:
            return None
        return head + (it - ih) + (self._tail_length(spans, piece, t, y) if t < y else 0)

    def _tail_length(self, spans: list[tuple[int, int]], piece: str, t: int, y: int) -> int:
        """Tokens of piece[t:y] where it follows a hard boundary inside a text (not at the text's start):
        after a space boundary, after an added token, or starting with one (`spans`: the chunk's added tokens)."""
        tail = piece[t:y]
        context = None
        for s, e in spans:
            if e == t:
                context = piece[s:e]
                break
        if context is None:
            if piece[t] != " ":  # the tail starts with an added token, which splits off by itself
                return self.encode.length(tail, False)
            context = "a"
        return self.encode.length(context + tail, False) - self.encode.length(context, False)


@dataclass
class Verifier:
    """Proves the derived lengths equal to the exact ones on the first samples and on every
    `every`-th sample after them; the first disagreement switches the audit to the exact path."""

    first: int = 256
    every: int = 64
    checked: int = 0
    seen: int = 0
    disproved: str | None = None

    def wants(self, index: int) -> bool:
        return self.disproved is None and (index < self.first or index % self.every == 0)


def image_token_ids(encode: Encoder, text: str, bos_id: int | None) -> list[int]:
    """LLaVA's ``tokenizer_image_token`` on a text of its own."""
    return PromptTokens(encode, text, True, bos_id).ids()
