"""A corpus of broken inputs: each gives exit 2 with one line, or a finding; never a traceback, never a write.

Every input is checked three ways: the Python API (`llava_doctor.api.audit`, which records an unreadable
input in `Report.input_errors` and never raises for it), the click CLI in-process, and (marked slow) the
CLI in a fresh subprocess. The files are hashed (content, size, mtime, mode) before and after: nothing
may change or appear. The hostile classes at the end (FIFOs, devices, sockets, files of 64 GiB, zip
bombs, endless pickles, configs declaring a million layers, sparse shards) run in a child process with
enforced time and memory limits.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from _ckpt_builders import snapshot
from llava_doctor.findings import Severity

EXIT_INPUT_ERROR = "exit2"


def _valid_st(path: Path, tensors: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    tensors = tensors or {
        "model.layers.0.mlp.up_proj.weight": np.ones((4, 4), np.float16),
        "lm_head.weight": np.arange(8, dtype=np.float32).reshape(2, 4),
    }
    save_file(tensors, str(path))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _raw_st(path: Path, header, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _truncated(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _sharded_dir(d: Path, weight_map: dict, shards: dict[str, dict]) -> Path:
    d.mkdir()
    for name, tensors in shards.items():
        _valid_st(d / name, tensors)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


ONE = {"lm_head.weight": np.ones((2, 2), np.float32)}
TWO = {"model.norm.weight": np.ones(2, np.float32)}


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _pickle_file(path: Path, obj, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _torch_save(path: Path, obj) -> Path:
    import torch

    torch.save(obj, path)
    return path


def _t(*shape):
    import torch

    return torch.ones(*shape)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _fifo(d: Path) -> Path:
    path = d / "model.safetensors"
    os.mkfifo(path)
    return path


def _dir_with_fifo(d: Path) -> Path:
    d.mkdir()
    os.mkfifo(d / "model.safetensors")
    return d


def _ds_latest_nowhere(d: Path) -> Path:
    d.mkdir()
    (d / "latest").write_text("global_step7")
    return d


def _ds_truncated_model_states(d: Path) -> Path:
    tag = d / "global_step1"
    tag.mkdir(parents=True)
    (d / "latest").write_text("global_step1")
    _torch_save(tag / "mp_rank_00_model_states.pt", {"module": {"w": _t(8, 8)}, "param_shapes": [{"w": (8, 8)}], "ds_version": "0.19.8"})
    _truncated(tag / "mp_rank_00_model_states.pt", 0.6)
    return d


def _dir_with(d: Path, files: dict[str, bytes | Callable[[Path], Path]]) -> Path:
    d.mkdir()
    for name, content in files.items():
        if callable(content):
            content(d / name)
        else:
            (d / name).write_bytes(content)
    return d


def _unreadable(d: Path) -> Path:
    path = _valid_st(d / "model.safetensors")
    path.chmod(0)
    return path


def _zip_without_pickle(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/readme.txt", "hello")
    return path


def _crafted_stack_global(path: Path) -> Path:
    # module/name memoized and fetched back (BINGET) before STACK_GLOBAL: os.system("true")
    path.write_bytes(b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93\x8c\x04true\x85R.")
    return path


# name -> (builder(tmp_path) -> input path, expected: "exit2" or the finding code)
CORPUS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty-file": (lambda d: _write(d / "model.safetensors", b""), "LD206"),
    "shorter-than-length-prefix": (lambda d: _write(d / "m.safetensors", b"\x01\x02"), "LD206"),
    "header-length-beyond-file": (lambda d: _raw_st(d / "m.safetensors", b"{}", length=4096), "LD206"),
    "huge-declared-header": (lambda d: _raw_st(d / "m.safetensors", b"{}", length=1 << 62), "LD206"),
    "header-just-over-100MB": (lambda d: _raw_st(d / "m.safetensors", b"{}", length=100_000_001), "LD206"),
    "header-not-json": (lambda d: _raw_st(d / "m.safetensors", b"not json at all"), "LD206"),
    "header-json-array": (lambda d: _raw_st(d / "m.safetensors", [1, 2, 3]), "LD206"),
    "header-not-utf8": (lambda d: _raw_st(d / "m.safetensors", b'{"\xff\xfe": 1}'), "LD206"),
    "header-deeply-nested": (lambda d: _raw_st(d / "m.safetensors", _nested(100_000)), "LD206"),
    "header-duplicate-key": (lambda d: _raw_st(d / "m.safetensors", b'{"a": %s, "a": %s}' % (json.dumps(_entry()).encode(), json.dumps(_entry()).encode()), bytes(8)), "LD206"),
    "overlapping-offsets": (lambda d: _raw_st(d / "m.safetensors", {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, bytes(12)), "LD206"),
    "offsets-outside-data": (lambda d: _raw_st(d / "m.safetensors", {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(1000, 1008))}, bytes(8)), "LD206"),
    "offsets-wrong-size": (lambda d: _raw_st(d / "m.safetensors", {"a": _entry(shape=(3,), offsets=(0, 8))}, bytes(8)), "LD206"),
    "offsets-end-before-begin": (lambda d: _raw_st(d / "m.safetensors", {"a": _entry(offsets=(8, 0))}, bytes(8)), "LD206"),
    "unknown-dtype": (lambda d: _raw_st(d / "m.safetensors", {"a": _entry(dtype="F128")}, bytes(8)), "LD206"),
    "negative-shape": (lambda d: _raw_st(d / "m.safetensors", {"a": _entry(shape=(-2,))}, bytes(8)), "LD206"),
    "shape-not-a-list": (lambda d: _raw_st(d / "m.safetensors", {"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, bytes(8)), "LD206"),
    "metadata-not-strings": (lambda d: _raw_st(d / "m.safetensors", {"__metadata__": {"format": ["pt"]}, "a": _entry()}, bytes(8)), "LD206"),
    "truncated-safetensors": (lambda d: _truncated(_valid_st(d / "model.safetensors"), 0.9), "LD206"),
    "trailing-bytes": (lambda d: _write(d / "model.safetensors", _valid_st(d / "model.safetensors").read_bytes() + b"garbage"), "LD206"),
    "index-not-json": (lambda d: _dir_with(d / "ck", {"model-00001-of-00001.safetensors": lambda p: _valid_st(p), "model.safetensors.index.json": b"{weight_map"}), "LD206"),
    "index-weight-map-list": (lambda d: _dir_with(d / "ck", {"model-00001-of-00001.safetensors": lambda p: _valid_st(p), "model.safetensors.index.json": b'{"weight_map": []}'}), "LD206"),
    "index-missing-shard": (lambda d: _sharded_dir(d / "ck", {"lm_head.weight": "m-1.safetensors", "model.norm.weight": "m-2.safetensors"}, {"m-1.safetensors": ONE}), "LD206"),
    "index-key-in-two-shards": (lambda d: _sharded_dir(d / "ck", {"lm_head.weight": "m-1.safetensors", "model.norm.weight": "m-2.safetensors"}, {"m-1.safetensors": ONE, "m-2.safetensors": {**ONE, **TWO}}), "LD206"),
    "index-key-missing-from-shard": (lambda d: _sharded_dir(d / "ck", {"lm_head.weight": "m-1.safetensors", "model.norm.weight": "m-1.safetensors"}, {"m-1.safetensors": ONE}), "LD206"),
    "index-path-traversal": (lambda d: _sharded_dir(d / "ck", {"lm_head.weight": "m-1.safetensors", "model.norm.weight": "../../etc/passwd"}, {"m-1.safetensors": ONE}), "LD206"),
    "index-file-given-directly-missing-shard": (lambda d: _sharded_dir(d / "ck", {"lm_head.weight": "gone.safetensors"}, {}) / "model.safetensors.index.json", "LD206"),
    "empty-dir": (lambda d: (d / "empty").mkdir() or d / "empty", EXIT_INPUT_ERROR),
    "dir-without-weights": (lambda d: _dir_with(d / "ck", {"README.md": b"hello", "config.json": b"{}"}), EXIT_INPUT_ERROR),
    "nonexistent-path": (lambda d: d / "does-not-exist", EXIT_INPUT_ERROR),
    "symlink-loop": (lambda d: os.symlink("loop", d / "loop") or d / "loop", EXIT_INPUT_ERROR),
    "dangling-symlink": (lambda d: os.symlink("nowhere.safetensors", d / "m.safetensors") or d / "m.safetensors", EXIT_INPUT_ERROR),
    "fifo": (_fifo, EXIT_INPUT_ERROR),
    "dir-with-fifo-named-like-weights": (lambda d: _dir_with_fifo(d / "ck"), EXIT_INPUT_ERROR),
    "dir-named-like-a-file": (lambda d: (d / "model.safetensors").mkdir() or d / "model.safetensors", EXIT_INPUT_ERROR),
    "unsupported-extension": (lambda d: _write(d / "model.txt", b"hi"), EXIT_INPUT_ERROR),
    "truncated-torch-zip": (lambda d: _truncated(_torch_save(d / "pytorch_model.bin", {"w": _t(64, 64)}), 0.5), "LD206"),
    "random-bytes-bin": (lambda d: _write(d / "pytorch_model.bin", np.random.default_rng(0).bytes(4096)), "LD206"),
    "zip-without-data-pkl": (lambda d: _zip_without_pickle(d / "model.pt"), "LD206"),
    "plain-pickle-not-torch": (lambda d: _pickle_file(d / "model.bin", {"w": [1.0, 2.0]}), "LD206"),
    "torch-file-holding-a-tensor": (lambda d: _torch_save(d / "t.pt", _t(2, 2)), "LD206"),
    "legacy-torch-format": (lambda d: _torch_save_legacy(d / "legacy.bin"), "LD206"),
    "pickle-reduce-creates-file": (lambda d: _pickle_file(d / "mm_projector.bin", {"w": _Reduce(open, (str(d / "PWNED"), "w"))}), "LD207"),
    "pickle-os-system": (lambda d: _pickle_file(d / "model.bin", _Reduce(os.system, ("touch PWNED",)), protocol=4), "LD207"),
    "pickle-builtins-eval": (lambda d: _pickle_file(d / "model.pt", _Reduce(eval, ("__import__('os').getpid()",)), protocol=0), "LD207"),
    "torch-save-argparse-namespace": (lambda d: _torch_save(d / "iter_10.pth", {"state_dict": {"llm.w": _t(2)}, "args": __import__("argparse").Namespace(lr=1)}), "LD207"),
    "crafted-stack-global-via-memo": (lambda d: _crafted_stack_global(d / "x.pt"), "LD207"),
    "deepspeed-latest-points-nowhere": (lambda d: _ds_latest_nowhere(d / "run"), "LD206"),
    "deepspeed-model-states-truncated": (lambda d: _ds_truncated_model_states(d / "run"), "LD206"),
    "config-json-not-json": (lambda d: _dir_with(d / "ck", {"config.json": b"{'model_type': llava", "model.safetensors": lambda p: _valid_st(p)}), "LD206"),
    "config-json-array": (lambda d: _dir_with(d / "ck", {"config.json": b"[]", "model.safetensors": lambda p: _valid_st(p)}), "LD206"),
    "adapter-config-garbage": (lambda d: _dir_with(d / "ck", {"adapter_config.json": b"\x00\x01garbage", "adapter_model.safetensors": lambda p: _valid_st(p, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((2, 4), np.float32)})}), "LD206"),
}
if hasattr(os, "getuid") and os.getuid() != 0:  # root reads anything
    CORPUS["permission-denied"] = (_unreadable, EXIT_INPUT_ERROR)


def _torch_save_legacy(path: Path) -> Path:
    """A legacy (non-zip) torch file whose storage data is cut off: loads fail, never crash."""
    import torch

    torch.save({"w": torch.ones(64, 64)}, path, _use_new_zipfile_serialization=False)
    return _truncated(path, 0.5)


def _build(name: str, tmp_path: Path) -> tuple[Path, str]:
    builder, expected = CORPUS[name]
    work = tmp_path / "in"
    work.mkdir()
    return Path(builder(work)), expected


def _no_side_effects(tmp_path: Path, before: dict) -> None:
    after = snapshot(tmp_path / "in")
    assert after == before, "the audit changed or created files"
    assert not (tmp_path / "in" / "PWNED").exists() and not Path("PWNED").exists()


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_api_and_cli(name, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from llava_doctor.api import audit
    from llava_doctor.cli import main

    path, expected = _build(name, tmp_path)
    before = snapshot(tmp_path / "in")
    monkeypatch.chdir(tmp_path)

    report = audit([str(path)], deep=True)  # an unreadable path is an input error of the report, never an exception
    if expected == EXIT_INPUT_ERROR:
        assert [artifact for artifact, _ in report.input_errors] == [str(path)], (report.input_errors, report.codes())
        assert all(message and "\n" not in message for _, message in report.input_errors)
        assert report.exit_code(Severity.ERROR) == 2
    else:
        assert not report.input_errors, report.input_errors
        assert expected in report.codes(), report.codes()
        assert all("\n" not in f.message for f in report.findings)

    result = CliRunner().invoke(main, ["audit", str(path), "--format", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if expected == EXIT_INPUT_ERROR:
        assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert "LLAVA_DOCTOR_DEBUG" not in result.stderr, result.stderr  # an unexpected error, not an InputError
    else:
        assert result.exit_code == 1, (result.exit_code, result.stderr)
        assert expected in [f["code"] for f in json.loads(result.stdout)["findings"]]
    _no_side_effects(tmp_path, before)


# one input per reader path in a fresh interpreter (the in-process CLI above covers every input)
SUBPROCESS_SAMPLE = [
    "huge-declared-header", "header-not-json", "overlapping-offsets", "truncated-safetensors", "index-missing-shard",
    "index-key-in-two-shards", "empty-dir", "nonexistent-path", "symlink-loop", "fifo", "truncated-torch-zip",
    "pickle-reduce-creates-file", "torch-save-argparse-namespace", "deepspeed-latest-points-nowhere",
    "deepspeed-model-states-truncated", "config-json-not-json",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_SAMPLE)
def test_cli_subprocess(name, tmp_path):
    path, expected = _build(name, tmp_path)
    before = snapshot(tmp_path / "in")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LLAVA_DOCTOR_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "llava_doctor", "audit", str(path), "--format", "json"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert "Traceback" not in done.stderr
    if expected == EXIT_INPUT_ERROR:
        assert done.returncode == 2, (done.returncode, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    else:
        assert done.returncode == 1, (done.returncode, done.stderr)
        assert expected in [f["code"] for f in json.loads(done.stdout)["findings"]]
    _no_side_effects(tmp_path, before)


# --------------------------------------------------------------------------- hostile inputs, in a bounded child
#
# Each class below once hung or ate gigabytes (a FIFO opened for reading blocks forever; /dev/zero never ends;
# a deflate bomb or a 64 GiB sparse shard is cheap to make). The audit runs in a fresh process under a CPU and
# address-space limit, with a wall-clock timeout; its peak RSS (os.wait4) must stay under MAX_RSS_MB.

CHILD_TIMEOUT_S = 60
MAX_RSS_MB = 1024
CHILD_ADDRESS_SPACE = 8 << 30  # a safety net for the shared machine; RSS is what the test asserts
OK = "ok"  # exit 0 or 1, no traceback: the input is readable and the point is that it stays bounded


def _child_limits() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (CHILD_TIMEOUT_S + 10, CHILD_TIMEOUT_S + 10))
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


def run_bounded(args: list[str], *, cwd: Path, timeout: float = CHILD_TIMEOUT_S) -> dict:
    """Run `args`; return rc, stdout, stderr, peak RSS (MB, of that child alone) and seconds; kill it at `timeout`."""
    import tempfile
    import threading
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LLAVA_DOCTOR_DEBUG", None)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                preexec_fn=_child_limits)
        killed = threading.Event()
        timer = threading.Timer(timeout, lambda: (killed.set(), proc.kill()))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        out.seek(0)
        err.seek(0)
        return {"rc": proc.returncode, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace"), "rss_mb": usage.ru_maxrss / 1024,
                "seconds": time.monotonic() - started, "killed": killed.is_set()}


def _symlink(target: str, link: Path) -> Path:
    os.symlink(target, link)
    return link


def _socket(path: Path) -> Path:
    import socket

    sock = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(path.parent)  # AF_UNIX paths are limited to ~107 bytes: bind relative to the folder
    try:
        sock.bind(path.name)
    finally:
        os.chdir(here)
    _SOCKETS.append(sock)  # kept open (and bound) for the test's life
    return path


_SOCKETS: list = []


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def _weights_dir(d: Path, special: dict[str, Callable[[Path], Path]]) -> Path:
    d.mkdir()
    _valid_st(d / "model.safetensors")
    for name, make in special.items():
        make(d / name)
    return d


def _sharded_with_special_index(d: Path, make: Callable[[Path], Path]) -> Path:
    d.mkdir()
    _valid_st(d / "model-00001-of-00002.safetensors", ONE)
    _valid_st(d / "model-00002-of-00002.safetensors", TWO)
    make(d / "model.safetensors.index.json")
    return d


def _deepspeed_with_latest(d: Path, make: Callable[[Path], Path]) -> Path:
    tag = d / "global_step1"
    tag.mkdir(parents=True)
    _torch_save(tag / "mp_rank_00_model_states.pt", {"module": {"w": _t(4, 4)}, "param_shapes": [{"w": (4, 4)}]})
    make(d / "latest")
    return d


def _hf_config(**text) -> dict:
    return {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
            "text_config": {"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
                            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, **text},
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}}


def _with_config(d: Path, config: dict) -> Path:
    d.mkdir()
    _valid_st(d / "model.safetensors", {"language_model.model.embed_tokens.weight": np.ones((300, 64), np.float16)})
    (d / "config.json").write_text(json.dumps(config))
    return d


def _original_with_tower(d: Path, tower: Callable[[Path], None], **flat) -> Path:
    """An original-LLaVA checkpoint whose mm_vision_tower is a local folder made by `tower`."""
    (d / "tower").mkdir(parents=True)
    tower(d / "tower")
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 300, "mm_vision_tower": str(d / "tower"), "mm_hidden_size": 64,
              "mm_projector_type": "mlp2x_gelu", **flat}
    ckpt = d / "ckpt"
    ckpt.mkdir()
    _valid_st(ckpt / "model.safetensors", {"model.embed_tokens.weight": np.ones((300, 64), np.float16),
                                          "model.mm_projector.0.weight": np.ones((64, 64), np.float16)})
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def _tower_config(config: dict) -> Callable[[Path], None]:
    return lambda folder: (folder / "config.json").write_text(json.dumps(config))


def _zip_member(path: Path, name: str, data: bytes, method: int) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr(name, data)
    return path


def _deflate_bomb(path: Path) -> Path:
    """A torch-shaped zip whose data.pkl is 1 GiB of opcodes deflated to ~1 MB."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as member:
            block = b"N0" * (1 << 19)  # NONE, POP: a valid, endless opcode stream
            for _ in range(1024):
                member.write(block)
    return path


def _zip_claiming_members(path: Path, count: int) -> Path:
    """A tiny zip whose end-of-central-directory record claims `count` members (zip64)."""
    import struct

    zip64_end = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, 0, 0)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, 0, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(zip64_end + locator + end)
    return path


def _long_legacy_pickle(path: Path) -> Path:
    """A non-zip torch-like file whose first pickle never ends within 20 MB of valid opcodes."""
    path.write_bytes(b"\x80\x02" + b"N0" * (10 << 20))
    return path


def _sparse_shard(path: Path, gib: int = 64) -> Path:
    """A safetensors file whose header declares `gib` GiB of F16 data that was never written (pre-allocated)."""
    numel = (gib << 30) // 2
    header = json.dumps({"lm_head.weight": {"dtype": "F16", "shape": [numel], "data_offsets": [0, numel * 2]}}).encode()
    prefix = struct.pack("<Q", len(header)) + header
    return _sparse(path, len(prefix) + numel * 2, prefix)


# hostile class -> case -> (builder(tmp dir) -> input path, "exit2" / "ok" / the finding code). Each class is
# audited in ONE bounded child process (all its inputs on one command line), so a class pays its imports once.
HOSTILE: dict[str, dict[str, tuple[Callable[[Path], Path], str]]] = {
    "non-regular files": {
        "checkpoint-symlink-to-dev-zero": (lambda d: _symlink("/dev/zero", d / "model.safetensors"), EXIT_INPUT_ERROR),
        "checkpoint-symlink-to-dev-urandom": (lambda d: _symlink("/dev/urandom", d / "pytorch_model.bin"), EXIT_INPUT_ERROR),
        "checkpoint-socket": (lambda d: _socket(d / "model.safetensors"), EXIT_INPUT_ERROR),
        "config-json-fifo": (lambda d: _weights_dir(d / "ck", {"config.json": lambda p: os.mkfifo(p) or p}), "LD206"),
        "config-json-to-dev-zero": (lambda d: _weights_dir(d / "ck", {"config.json": lambda p: _symlink("/dev/zero", p)}),
                                    "LD206"),
        "config-json-beside-a-file-is-a-fifo": (
            lambda d: _weights_dir(d / "ck", {"config.json": lambda p: os.mkfifo(p) or p}) / "model.safetensors", "LD206"),
        "adapter-config-socket": (lambda d: _weights_dir(d / "ck", {"adapter_config.json": _socket}), "LD206"),
        "index-fifo": (lambda d: _sharded_with_special_index(d / "ck", lambda p: os.mkfifo(p) or p), "LD206"),
        "index-to-dev-urandom": (lambda d: _sharded_with_special_index(d / "ck", lambda p: _symlink("/dev/urandom", p)),
                                 "LD206"),
        "latest-fifo": (lambda d: _deepspeed_with_latest(d / "run", lambda p: os.mkfifo(p) or p), "LD206"),
        "latest-to-dev-zero": (lambda d: _deepspeed_with_latest(d / "run", lambda p: _symlink("/dev/zero", p)), "LD206"),
    },
    "sizes, configs and the schema they build": {
        "config-json-64GiB": (lambda d: _weights_dir(d / "ck", {"config.json": lambda p: _sparse(p, 64 << 30, b"{")}), "LD206"),
        "index-64GiB": (lambda d: _sharded_with_special_index(d / "ck", lambda p: _sparse(p, 64 << 30, b"{")), "LD206"),
        "latest-1GiB": (lambda d: _deepspeed_with_latest(d / "run", lambda p: _sparse(p, 1 << 30, b"global_step1")), "LD206"),
        "tower-config-fifo": (lambda d: _original_with_tower(d, lambda f: os.mkfifo(f / "config.json")), OK),
        "tower-config-to-dev-zero": (lambda d: _original_with_tower(d, lambda f: os.symlink("/dev/zero", f / "config.json")),
                                     OK),
        "tower-config-64GiB": (lambda d: _original_with_tower(d, lambda f: _sparse(f / "config.json", 64 << 30, b"{")), OK),
        "tower-config-1e6-layers": (lambda d: _original_with_tower(d, _tower_config(
            {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 10**6,
             "num_attention_heads": 4, "image_size": 32, "patch_size": 8})), OK),
        "flat-config-1e6-layers": (lambda d: _original_with_tower(d, _tower_config({}), num_hidden_layers=10**6), "LD203"),
        "text-config-1e6-layers": (lambda d: _with_config(d / "ck", _hf_config(num_hidden_layers=10**6)), "LD203"),
        "text-config-1e6-experts": (lambda d: _with_config(d / "ck", _hf_config(model_type="mixtral", num_local_experts=10**6)),
                                    "LD203"),
        "vision-config-1e6-layers": (lambda d: _with_config(d / "ck", {**_hf_config(), "vision_config": {
            **_hf_config()["vision_config"], "num_hidden_layers": 10**6}}), "LD203"),
    },
    "torch archives and pickle streams": {
        "zip-deflate-bomb": (lambda d: _deflate_bomb(d / "model.pt"), "LD206"),
        "zip-stored-pickle-20MiB": (lambda d: _zip_member(d / "model.pt", "archive/data.pkl",
                                                          b"\x80\x02" + b"N0" * (10 << 20), 0), "LD206"),
        "zip-claiming-1e9-members": (lambda d: _zip_claiming_members(d / "model.pt", 10**9), "LD206"),
        "legacy-pickle-stream-20MB": (lambda d: _long_legacy_pickle(d / "pytorch_model.bin"), "LD206"),
    },
    "sparse weights": {
        "sparse-shard-64GiB": (lambda d: _sparse_shard(d / "model.safetensors"), "LD206"),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_hostile_inputs_are_bounded_in_time_and_memory(hostile, tmp_path):
    cases = {}
    for name, (builder, expected) in HOSTILE[hostile].items():
        (tmp_path / "in" / name).mkdir(parents=True)
        cases[name] = (str(builder(tmp_path / "in" / name)), expected)
    before = snapshot(tmp_path / "in")
    paths = [path for path, _ in cases.values()]
    done = run_bounded([sys.executable, "-m", "llava_doctor", "audit", *paths, "--deep", "--format", "json"], cwd=tmp_path)
    assert not done["killed"], f"{hostile}: still running after {CHILD_TIMEOUT_S} s"
    assert done["rss_mb"] < MAX_RSS_MB, f"{hostile}: peak RSS {done['rss_mb']:.0f} MB"
    assert "Traceback" not in done["stderr"], done["stderr"][-2000:]
    report = json.loads(done["stdout"])
    errors = {e["artifact"]: e["message"] for e in report.get("errors", [])}
    codes: dict[str, set[str]] = {}
    for finding in report["findings"]:
        codes.setdefault(finding["artifact"], set()).add(finding["code"])
    for name, (path, expected) in cases.items():
        if expected == EXIT_INPUT_ERROR:
            assert path in errors and "\n" not in errors[path], (name, errors)
        else:
            assert path not in errors, (name, errors.get(path))
            assert expected == OK or expected in codes.get(path, ()), (name, codes.get(path))
    assert done["rc"] == (2 if errors else done["rc"]) and done["rc"] in (0, 1, 2), done["rc"]
    _no_side_effects(tmp_path, before)


def test_one_unreadable_path_does_not_stop_the_others(tmp_path):
    from llava_doctor.api import audit

    good = _valid_st(tmp_path / "good.safetensors")
    os.mkfifo(tmp_path / "pipe.safetensors")
    report = audit([tmp_path / "missing.safetensors", tmp_path / "pipe.safetensors", good])
    assert report.artifacts == [str(good)]
    assert [a for a, _ in report.input_errors] == [str(tmp_path / "missing.safetensors"), str(tmp_path / "pipe.safetensors")]
    assert "not a regular file or directory (a FIFO)" in report.input_errors[1][1]
    assert report.exit_code(Severity.ERROR) == 2
