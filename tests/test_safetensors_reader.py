"""The torch-free safetensors header parser and the shard-index reconciliation."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from llava_doctor.artifacts.readers import open_checkpoint
from llava_doctor.artifacts.safetensors_format import (
    MAX_HEADER_BYTES,
    ShardIndex,
    parse_header,
    parse_index,
    read_header,
    reconcile_index,
)


def st_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def write_st(path, tensors: dict[str, np.ndarray], metadata=None):
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


def kinds(problems):
    return sorted(p.kind for p in problems)


def test_valid_file_offsets_point_at_the_data(tmp_path):
    arrays = {"b": np.arange(6, dtype=np.float16).reshape(2, 3), "a": np.arange(4, dtype=np.float32), "z": np.zeros((0, 3), np.float32)}
    path = write_st(tmp_path / "x.safetensors", arrays, metadata={"format": "pt"})
    header = read_header(path, file="x.safetensors")
    assert header.problems == [] and header.metadata == {"format": "pt"}
    raw = path.read_bytes()
    for name, array in arrays.items():
        info = header.tensors[name]
        assert (info.shape, info.nbytes) == (array.shape, array.nbytes)
        assert raw[info.offset: info.offset + info.nbytes] == array.tobytes()
    assert {header.tensors[k].dtype for k in arrays} == {"F16", "F32"}


def test_header_rules_match_safetensors():
    data = bytes(16)
    good = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    raw = json.dumps(good).encode()
    assert parse_header(raw, file="f", file_size=8 + len(raw) + 16).problems == []
    cases = {
        "overlap": {"a": good["a"], "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        "bad-header": {"a": good["a"], "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 16]}},  # 12 bytes expected
    }
    for kind, header in cases.items():
        raw = json.dumps(header).encode()
        assert kind in kinds(parse_header(raw, file="f", file_size=8 + len(raw) + len(data)).problems), kind
    raw = json.dumps(good).encode()
    assert kinds(parse_header(raw, file="f", file_size=8 + len(raw) + 20).problems) == ["truncated"]  # trailing bytes
    assert kinds(parse_header(raw, file="f", file_size=8 + len(raw) + 10).problems) == ["truncated"]  # cut short
    assert set(parse_header(raw, file="f", file_size=8 + len(raw) + 10).tensors) == {"a"}  # b lies past the end


def test_gap_and_out_of_file_and_duplicates():
    gap = {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}}
    raw = json.dumps(gap).encode()
    assert kinds(parse_header(raw, file="f", file_size=8 + len(raw) + 6).problems) == ["bad-header"]
    far = {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, "b": {"dtype": "U8", "shape": [2], "data_offsets": [100, 102]}}
    raw = json.dumps(far).encode()
    assert "offset-out-of-file" in kinds(parse_header(raw, file="f", file_size=8 + len(raw) + 2).problems)
    raw = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    assert kinds(parse_header(raw, file="f", file_size=8 + len(raw) + 1).problems) == ["bad-header"]


def test_huge_declared_header_is_not_read(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    assert kinds(read_header(path).problems) == ["header-too-large"]
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert kinds(read_header(path).problems) == ["header-too-large"]
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    assert kinds(read_header(path).problems) == ["truncated"]


def test_metadata_must_be_str_to_str():
    raw = json.dumps({"__metadata__": {"format": 1}}).encode()
    problems = parse_header(raw, file="f", file_size=8 + len(raw)).problems
    assert kinds(problems) == ["bad-header"] and "__metadata__" in problems[0].detail


def _sharded(tmp_path, weight_map, shards: dict[str, dict], metadata=None):
    for name, arrays in shards.items():
        write_st(tmp_path / name, arrays)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": metadata or {}, "weight_map": weight_map}))
    return open_checkpoint(tmp_path)


def test_sharded_index_reconciliation(tmp_path):
    a, b = np.ones(2, np.float32), np.ones(3, np.float32)
    ckpt = _sharded(
        tmp_path,
        {"x": "s-00001-of-00002.safetensors", "y": "s-00002-of-00002.safetensors", "gone": "s-00002-of-00002.safetensors", "lost": "s-00003-of-00002.safetensors"},
        {"s-00001-of-00002.safetensors": {"x": a, "dup": b}, "s-00002-of-00002.safetensors": {"y": b, "dup": b}},
        metadata={"total_size": 7},
    )
    found = {(p.kind, p.key) for p in ckpt.integrity}
    assert ("missing-shard", "lost") in found
    assert ("missing-key", "gone") in found
    assert ("duplicate-key", "dup") in found
    assert ("unindexed-key", "dup") not in found  # reported once, as a duplicate
    assert any(p.kind == "total-size" for p in ckpt.integrity)
    assert ckpt.format == "safetensors-sharded" and set(ckpt.tensors) == {"x", "y", "dup"}


def test_unindexed_key_and_consistent_total_size(tmp_path):
    a = np.ones(2, np.float32)
    ckpt = _sharded(tmp_path, {"x": "m-00001-of-00001.safetensors"}, {"m-00001-of-00001.safetensors": {"x": a, "extra": a}}, {"total_size": 16})
    assert [(p.kind, p.key) for p in ckpt.integrity] == [("unindexed-key", "extra")]


def test_index_parse_errors():
    assert kinds(parse_index(b"{not json", file="i").problems) == ["bad-index"]
    assert kinds(parse_index(b"[]", file="i").problems) == ["bad-index"]
    assert kinds(parse_index(b'{"metadata": {}}', file="i").problems) == ["bad-index"]
    index = parse_index(json.dumps({"weight_map": {"a": "../../etc/passwd", "b": "/abs.safetensors", "c": 3, "d": "ok.safetensors"}}), file="i")
    assert index.weight_map == {"d": "ok.safetensors"} and kinds(index.problems) == ["bad-index"] * 3
    assert reconcile_index(ShardIndex(file="i", weight_map={"a": "s"}), {"s": ("a",)}) == []


def test_structure_audit_imports_no_torch(tmp_path):
    """The header path must stay torch-free (the < 1 s structure-audit target)."""
    write_st(tmp_path / "model.safetensors", {"model.layers.0.mlp.up_proj.weight": np.ones((2, 2), np.float16)})
    code = (
        "import sys; from llava_doctor.artifacts.readers import open_checkpoint; "
        f"c = open_checkpoint({str(tmp_path)!r}); assert c.layout == 'llm-only', c.layout; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reading_is_read_only(tmp_path):
    path = write_st(tmp_path / "model.safetensors", {"lm_head.weight": np.ones((2, 2), np.float32)})
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        ckpt = open_checkpoint(tmp_path)
        assert set(ckpt.tensors) == {"lm_head.weight"}
    finally:
        tmp_path.chmod(0o755)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    from llava_doctor.findings import InputError

    os.mkfifo(tmp_path / "model.safetensors")  # open() for reading would wait for a writer forever
    with pytest.raises(InputError, match="not a regular safetensors file"):
        read_header(tmp_path / "model.safetensors")
