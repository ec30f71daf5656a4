"""Hypothesis fuzzing of the header parser, the index reader and the pickle-globals scanner."""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_doctor.artifacts.checkpoint import DTYPE_SIZES, IntegrityProblem
from llava_doctor.artifacts.safetensors_format import parse_header, parse_index, read_header, reconcile_index
from llava_doctor.artifacts.torch_format import PickleScanError, scan_pickle_globals

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_sound(result, file_size: int, header_len: int) -> None:
    for problem in result.problems:
        assert isinstance(problem, IntegrityProblem) and "\n" not in problem.detail
    data_start = 8 + header_len
    spans = []
    for info in result.tensors.values():
        assert info.dtype in DTYPE_SIZES
        assert all(isinstance(d, int) and d >= 0 for d in info.shape)
        assert info.nbytes == info.numel * DTYPE_SIZES[info.dtype]
        assert data_start <= info.offset and info.offset + info.nbytes <= file_size  # inside the file
        spans.append((info.offset, info.offset + info.nbytes))


def _write_and_read(blob: bytes):
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        return read_header(path, file="f.safetensors")
    finally:
        os.unlink(path)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(blob):
    result = _write_and_read(blob)
    header_len = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
    assert_sound(result, len(blob), header_len)
    if result.tensors:
        assert not result.problems or all(p.kind != "header-too-large" for p in result.problems)


@FUZZ
@given(st.binary(max_size=256), st.binary(max_size=64))
def test_length_prefix_with_arbitrary_header(header, data):
    blob = struct.pack("<Q", len(header)) + header + data
    result = _write_and_read(blob)
    assert_sound(result, len(blob), len(header))


ints = st.one_of(st.integers(min_value=-3, max_value=40), st.integers(min_value=-(2**70), max_value=2**70))
json_scalars = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=False), ints)
entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.one_of(st.sampled_from(sorted(DTYPE_SIZES)), st.sampled_from(["F128", "", "f32"]), json_scalars),
        "shape": st.one_of(st.lists(ints, max_size=3), st.lists(st.integers(0, 4), max_size=3), json_scalars),
        "data_offsets": st.one_of(st.lists(ints, min_size=0, max_size=3), st.tuples(st.integers(0, 64), st.integers(0, 64)).map(list), json_scalars),
    },
)
headers = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(entries, json_scalars, st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
    max_size=6,
)


@FUZZ
@given(headers, st.integers(min_value=0, max_value=128))
def test_structured_headers(header, data_len):
    raw = json.dumps(header).encode()
    result = parse_header(raw, file="f", file_size=8 + len(raw) + data_len)
    assert_sound(result, 8 + len(raw) + data_len, len(raw))


def _valid_blob(sizes: list[int]) -> tuple[dict, bytes]:
    header, offset = {}, 0
    for i, n in enumerate(sizes):
        header[f"t{i}"] = {"dtype": "U8", "shape": [n], "data_offsets": [offset, offset + n]}
        offset += n
    return header, bytes(range(256)) * (offset // 256 + 1)


@FUZZ
@given(
    st.lists(st.integers(0, 16), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    st.integers(min_value=-40, max_value=8),
)
def test_mutated_valid_files(sizes, flips, cut):
    """Flip bytes of a valid file and cut or extend it: still no exception, nothing outside the file."""
    header, data = _valid_blob(sizes)
    raw = json.dumps(header).encode()
    blob = bytearray(struct.pack("<Q", len(raw)) + raw + data[: sum(sizes)])
    for position, value in flips:
        if position < len(blob):
            blob[position] = value
    blob = bytes(blob[: max(0, len(blob) + cut)]) if cut < 0 else bytes(blob) + bytes(cut)
    result = _write_and_read(blob)
    header_len = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
    assert_sound(result, len(blob), header_len)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.builds(lambda o: json.dumps(o).encode(), st.dictionaries(st.sampled_from(["weight_map", "metadata", "x"]), st.one_of(json_scalars, st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=12), json_scalars), max_size=4)), max_size=3))))
def test_index_reader(text):
    index = parse_index(text, file="model.safetensors.index.json")
    assert all(isinstance(k, str) and isinstance(v, str) and ".." not in v.split("/") for k, v in index.weight_map.items())
    shard_keys = {shard: (tuple(index.weight_map)[:1] if i % 2 else None) for i, shard in enumerate(index.shards())}
    for problem in index.problems + reconcile_index(index, shard_keys, total_bytes=3):
        assert isinstance(problem, IntegrityProblem) and "\n" not in problem.detail


@FUZZ
@given(st.binary(max_size=300))
def test_pickle_scanner_only_raises_its_own_error(blob):
    try:
        found = scan_pickle_globals(io.BufferedReader(io.BytesIO(blob)), max_pickles=5)
    except PickleScanError as exc:
        assert isinstance(exc.globals, tuple)
    else:
        assert all(isinstance(g, str) for g in found)
