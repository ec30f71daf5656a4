"""safetensors headers and sharded indexes, parsed with struct + json only (no torch, no tensor data).

A safetensors file is ``u64 little-endian header length N`` + ``N bytes of JSON`` + a data area.
The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the data area) plus an optional ``__metadata__`` of str -> str. The safetensors
library itself refuses a file unless the tensors tile the data area exactly (no gap, no overlap,
nothing after the last tensor) and the header is at most 100 MB; the same rules are applied here,
but every defect becomes an :class:`IntegrityProblem` instead of an exception, and every tensor that
is individually sound is still indexed.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from math import prod
from typing import Any, Mapping

from ..files import open_regular
from ..findings import one_line
from .checkpoint import DTYPE_SIZES, IntegrityProblem, TensorInfo

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit (MAX_HEADER_SIZE)
LENGTH_PREFIX_BYTES = 8
METADATA_KEY = "__metadata__"


@dataclass
class SafetensorsHeader:
    """What one file's header says, after validation."""

    file: str  # as it should appear in TensorInfo.file (relative to the checkpoint root)
    file_size: int
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, str] | None = None
    problems: list[IntegrityProblem] = field(default_factory=list)
    declared_keys: tuple[str, ...] = ()  # every tensor name in the header, sound or not

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes or 0 for t in self.tensors.values())


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_defect(name: str, entry: Any) -> str | None:
    """Why a header entry is malformed on its own (before looking at other entries), or None."""
    if not isinstance(entry, dict):
        return f"entry is {type(entry).__name__}, expected an object with dtype/shape/data_offsets"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        return f"unknown dtype {dtype!r}, expected one of {', '.join(sorted(DTYPE_SIZES))}"
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        return f"data_offsets {offsets!r} is not [begin, end] of non-negative integers"
    begin, end = offsets
    if end < begin:
        return f"data_offsets [{begin}, {end}] end before begin"
    expected = prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        return (
            f"data_offsets [{begin}, {end}] span {end - begin} bytes, expected {expected} "
            f"for {dtype} {list(shape)}"
        )
    return None


def parse_header(header: bytes, *, file: str, file_size: int) -> SafetensorsHeader:
    """Validate a header's JSON bytes against a file of `file_size` bytes. Pure: no I/O."""
    result = SafetensorsHeader(file=file, file_size=file_size)
    problem = lambda kind, detail, key=None: result.problems.append(  # noqa: E731
        IntegrityProblem(kind, file, printable(detail), None if key is None else printable(key))
    )
    data_start = LENGTH_PREFIX_BYTES + len(header)
    data_size = file_size - data_start
    try:
        parsed = json.loads(header.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except UnicodeDecodeError as exc:
        problem("bad-header", f"header is not UTF-8 ({one_line(exc, 200)})")
        return result
    except (ValueError, RecursionError) as exc:
        problem("bad-header", f"header is not valid JSON ({one_line(exc, 200)})")
        return result
    if not isinstance(parsed, dict):
        problem("bad-header", f"header is a JSON {type(parsed).__name__}, expected an object")
        return result

    metadata = parsed.pop(METADATA_KEY, None)
    if metadata is not None:
        if isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            result.metadata = metadata
        else:
            problem("bad-header", f"{METADATA_KEY} is {_brief(metadata)}, expected an object of string to string")
    result.declared_keys = tuple(parsed)

    sound: list[tuple[int, int, str, dict]] = []
    for name, entry in parsed.items():
        defect = "name contains control characters" if not name.isprintable() else _entry_defect(name, entry)
        if defect is not None:
            problem("bad-header", f"tensor {name}: {defect}", name)
        else:
            sound.append((entry["data_offsets"][0], entry["data_offsets"][1], name, entry))
    sound.sort(key=lambda item: (item[0], item[1], item[2]))
    rejected = len(sound) < len(parsed)

    # A file cut short: the entries tile [0, declared end) exactly, but the data area stops early.
    beyond = [name for _, end, name, _ in sound if end > data_size]
    if beyond and _tiles(sound):
        declared = data_start + max(end for _, end, _, _ in sound)
        problem(
            "truncated",
            f"file is {file_size} bytes but its header declares {declared}: "
            f"{len(beyond)} tensors (from {beyond[0]}) lie past the end",
            beyond[0],
        )
    else:
        for name in beyond:
            problem("offset-out-of-file", f"tensor {name}: data ends beyond the data area of {max(data_size, 0)} bytes", name)
    sound = [item for item in sound if item[1] <= data_size]

    # Inside the file the tensors must tile [0, data_size) exactly: no overlap, no gap, no trailing bytes.
    covered, owner = 0, ""
    for begin, end, name, _ in sound:
        if begin < covered and end > begin:
            problem("overlap", f"tensor {name}: bytes [{begin}, {end}) overlap tensor {owner} (ends at {covered})", name)
        elif begin > covered and not rejected and not beyond:
            problem("bad-header", f"tensor {name}: {begin - covered} unused bytes before its data_offsets begin {begin}", name)
        if end > covered:
            covered, owner = end, name
    if covered < data_size and not rejected and not beyond:
        problem(
            "truncated",
            f"data area is {data_size} bytes but the tensors cover {covered}: {data_size - covered} trailing bytes "
            "(a header that lost entries, or an appended file)",
        )

    for begin, end, name, entry in sound:
        result.tensors[name] = TensorInfo(
            name=name,
            shape=tuple(entry["shape"]),
            dtype=entry["dtype"],
            file=file,
            offset=data_start + begin,
            nbytes=end - begin,
        )
    return result


def _tiles(sound: list[tuple[int, int, str, dict]]) -> bool:
    """Do the (sorted) byte ranges follow each other from 0 with no gap and no overlap?"""
    covered = 0
    for begin, end, _, _ in sound:
        if begin != covered and not (begin == end and begin <= covered):
            return False
        covered = max(covered, end)
    return True


def read_header(path: str | os.PathLike, *, file: str | None = None) -> SafetensorsHeader:
    """Read and validate one file's header; reads at most 8 + min(declared, 100 MB) bytes.

    Raises InputError for anything but a regular file (a FIFO is never opened for reading) and
    OSError for I/O failures on the open file.
    """
    file = os.fspath(path) if file is None else file
    with open_regular(path, what="safetensors file") as fh:
        size = os.fstat(fh.fileno()).st_size
        result = SafetensorsHeader(file=file, file_size=size)
        prefix = fh.read(LENGTH_PREFIX_BYTES)
        if len(prefix) < LENGTH_PREFIX_BYTES:
            result.problems.append(
                IntegrityProblem("truncated", file, f"file is {size} bytes, shorter than the 8-byte header length")
            )
            return result
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            result.problems.append(
                IntegrityProblem("header-too-large", file, f"declared header length {length} bytes, limit {MAX_HEADER_BYTES}")
            )
            return result
        if LENGTH_PREFIX_BYTES + length > size:
            result.problems.append(
                IntegrityProblem(
                    "truncated", file, f"declared header length {length} bytes but only {size - LENGTH_PREFIX_BYTES} follow"
                )
            )
            return result
        header = fh.read(length)
    if len(header) < length:  # the file shrank while being read
        result.problems.append(IntegrityProblem("truncated", file, f"header ended after {len(header)} of {length} bytes"))
        return result
    return parse_header(header, file=file, file_size=size)


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints: <name>.safetensors.index.json (also used for pytorch_model.bin.index.json)


@dataclass
class ShardIndex:
    file: str
    weight_map: dict[str, str] = field(default_factory=dict)  # key -> shard path (relative to the index's folder)
    metadata: dict[str, Any] = field(default_factory=dict)
    problems: list[IntegrityProblem] = field(default_factory=list)

    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def _safe_shard_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return bool(name) and not os.path.isabs(name) and ".." not in parts and "" not in parts and "\x00" not in name


def parse_index(text: bytes | str, *, file: str) -> ShardIndex:
    """Validate an index's JSON (pure). Entries naming unsafe shard paths are dropped with a problem."""
    index = ShardIndex(file=file)
    bad = lambda detail, key=None: index.problems.append(  # noqa: E731
        IntegrityProblem("bad-index", file, printable(detail), None if key is None else printable(key))
    )
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        parsed = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        bad(f"index is not valid UTF-8 JSON ({one_line(exc, 200)})")
        return index
    if not isinstance(parsed, dict):
        bad(f"index is a JSON {type(parsed).__name__}, expected an object with weight_map")
        return index
    weight_map = parsed.get("weight_map")
    if not isinstance(weight_map, dict):
        bad(f"weight_map is {_brief(weight_map)}, expected an object of tensor name to shard file")
        return index
    metadata = parsed.get("metadata")
    if isinstance(metadata, dict):
        index.metadata = metadata
    elif metadata is not None:
        bad(f"metadata is {_brief(metadata)}, expected an object")
    for key, shard in weight_map.items():
        if not key.isprintable():
            bad(f"key {key}: name contains control characters", key)
            continue
        if not isinstance(shard, str) or not _safe_shard_name(shard) or not shard.isprintable():
            bad(f"key {key}: shard {shard!r} is not a relative file name inside the checkpoint", key)
            continue
        index.weight_map[key] = shard
    return index


def reconcile_index(
    index: ShardIndex,
    shard_keys: Mapping[str, tuple[str, ...] | None],
    *,
    prefix: str = "",
    total_bytes: int | None = None,
) -> list[IntegrityProblem]:
    """Compare an index with what its shards hold (pure).

    `shard_keys` maps every shard named by the index (and any sibling shard the caller found) to the
    keys its header declares, or None when the shard is absent. `prefix` is the index folder relative
    to the checkpoint root, prepended to shard names in messages.
    """
    problems: list[IntegrityProblem] = []
    where = lambda shard: f"{prefix}{shard}"  # noqa: E731
    expected: dict[str, list[str]] = {}
    for key, shard in index.weight_map.items():
        expected.setdefault(shard, []).append(key)
    for shard in sorted(expected):
        if shard_keys.get(shard) is None:
            keys = expected[shard]
            problems.append(
                IntegrityProblem(
                    "missing-shard", where(shard),
                    f"shard named by {index.file} for {len(keys)} keys (e.g. {sorted(keys)[0]}) does not exist",
                    sorted(keys)[0],
                )
            )
    holders: dict[str, list[str]] = {}
    for shard in sorted(shard_keys):
        keys = shard_keys[shard]
        if keys is None:
            continue
        present = set(keys)
        for key in keys:
            holders.setdefault(key, []).append(shard)
        for key in sorted(set(expected.get(shard, ())) - present):
            problems.append(
                IntegrityProblem("missing-key", where(shard), f"key {key} is mapped to this shard by {index.file} but not in it", key)
            )
    for key, shards in sorted(holders.items()):
        if len(shards) > 1:
            problems.append(
                IntegrityProblem(
                    "duplicate-key", where(shards[1]),
                    f"key {key} is stored in {len(shards)} shards: {', '.join(where(s) for s in shards)}; the index names {index.weight_map.get(key, 'none')}",
                    key,
                )
            )
        elif key not in index.weight_map:
            problems.append(
                IntegrityProblem("unindexed-key", where(shards[0]), f"key {key} is in this shard but not in {index.file}; loaders will skip it", key)
            )
    declared_total = index.metadata.get("total_size")
    if total_bytes is not None and _is_int(declared_total) and declared_total != total_bytes:
        problems.append(
            IntegrityProblem(
                "total-size", index.file,
                f"metadata total_size is {declared_total} bytes but the indexed tensors hold {total_bytes}",
            )
        )
    return [IntegrityProblem(p.kind, printable(p.file), printable(p.detail), p.key) for p in problems]


def printable(text: str) -> str:
    """`text` with control characters escaped, so that names from a file never break a one-line message."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _brief(value: Any) -> str:
    text = json.dumps(value)[:60] if not isinstance(value, bytes) else repr(value)[:60]
    return f"{type(value).__name__} {text}" if value is not None else "missing"


