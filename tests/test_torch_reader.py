"""`.bin/.pt/.pth`: globals listed from the opcodes, unsafe pickles never loaded, safe ones indexed."""
from __future__ import annotations

import io
import os
import pickle
import pickletools

import pytest

torch = pytest.importorskip("torch")

from llava_doctor.artifacts.readers import open_checkpoint  # noqa: E402
from llava_doctor.artifacts.torch_format import (  # noqa: E402
    ALLOWED_GLOBALS,
    disallowed,
    read_torch_state_dict,
    scan_pickle_globals,
)


def scan(data: bytes, **kw) -> tuple[str, ...]:
    return scan_pickle_globals(io.BufferedReader(io.BytesIO(data)), **kw)


class Touch:
    """Unpickling this would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_globals_from_opcodes_every_protocol(protocol, tmp_path):
    data = pickle.dumps({"x": Touch(str(tmp_path / "pwned"))}, protocol=protocol)
    assert disallowed(scan(data)) == ("io.open",)
    assert not (tmp_path / "pwned").exists()


def test_stack_global_through_the_memo():
    """STACK_GLOBAL whose module/name strings come back from the memo (BINGET) is still resolved."""
    data = pickle.dumps([os.system, os.system, pickle.loads], protocol=4)
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert "STACK_GLOBAL" in ops
    assert set(scan(data)) == {"posix.system", "_pickle.loads"}
    # module and name pushed, memoized, then fetched again before STACK_GLOBAL
    crafted = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93)R."
    assert scan(crafted) == ("os.system",)


def test_unresolvable_stack_global_is_never_allowed():
    crafted = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94N\x93."  # a None between the strings and STACK_GLOBAL
    assert disallowed(scan(crafted)) == ("<unresolved STACK_GLOBAL>",)


def test_legacy_format_walks_all_five_pickles(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2, 2)}, path, _use_new_zipfile_serialization=False)
    with open(path, "rb") as fh:
        found = scan_pickle_globals(io.BufferedReader(fh), max_pickles=5)
    assert "torch._utils._rebuild_tensor_v2" in found and not disallowed(found)
    contents = read_torch_state_dict(str(path), file="legacy.pt")
    assert not contents.problems and contents.tensors["w"].offset is None  # no mmap for legacy files
    assert torch.equal(contents.loader(contents.tensors["w"]), torch.ones(2, 2))


def test_zip_offsets_and_views(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    state = {"a": base, "view": base[4:8], "t": base.reshape(3, 4).t(), "h": torch.ones(3, dtype=torch.bfloat16), "e": torch.zeros(0)}
    path = tmp_path / "m.bin"
    torch.save(state, path)
    ckpt = open_checkpoint(path)
    raw = path.read_bytes()
    for key in ("a", "view", "h"):
        info = ckpt.tensors[key]
        assert raw[info.offset: info.offset + info.nbytes] == state[key].view(torch.uint8).numpy().tobytes(), key
    assert ckpt.tensors["t"].offset is None  # not contiguous: reachable only through the loader
    assert torch.equal(ckpt.load_tensor(ckpt.tensors["t"]), state["t"])
    assert ckpt.tensors["h"].dtype == "BF16" and ckpt.tensors["e"].shape == (0,)


@pytest.mark.parametrize("wrapper", ["state_dict", "module", "model"])
def test_wrappers_are_unwrapped(tmp_path, wrapper):
    path = tmp_path / "w.pth"
    torch.save({wrapper: {"llm.lm_head.weight": torch.ones(2, 2), "step": 3}, "meta": {"epoch": 1}}, path)
    ckpt = open_checkpoint(path)
    assert set(ckpt.tensors) == {"llm.lm_head.weight"}
    assert ckpt.notes["state_dict_wrappers"] == {"w.pth": wrapper}
    assert ckpt.notes["non_tensor_entries"] == {"w.pth": 1}


@pytest.mark.parametrize(
    "payload,expected",
    [
        (lambda p: {"args": __import__("argparse").Namespace(lr=1)}, "argparse.Namespace"),
        (lambda p: {"x": Touch(p)}, "io.open"),
        (lambda p: {"rng": __import__("numpy").zeros(2)}, "numpy"),
    ],
    ids=["argparse", "file-creating-reduce", "numpy"],
)
def test_unsafe_torch_files_are_not_loaded(tmp_path, payload, expected):
    target = tmp_path / "pwned"
    path = tmp_path / "unsafe.pt"
    torch.save({"w": torch.ones(1), **payload(str(target))}, path)
    target.unlink(missing_ok=True)  # torch.save itself does not create it, but be explicit
    ckpt = open_checkpoint(path)
    assert len(ckpt.unsafe) == 1 and any(expected in g for g in ckpt.unsafe[0].globals)
    assert ckpt.tensors == {} and not target.exists()


def test_allow_list_is_small():
    assert "argparse.Namespace" not in ALLOWED_GLOBALS and "builtins.eval" not in ALLOWED_GLOBALS
    assert {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.Size", "torch.FloatStorage"} <= ALLOWED_GLOBALS


def test_offsets_come_from_the_archive_not_from_guessing(tmp_path):
    """Equal-sized tensors stored before the state dict (under `meta`) must not shift the offsets."""
    earlier = {f"e{i}": torch.full((4,), float(i)) for i in range(3)}
    state = {f"llm.w{i}": torch.full((4,), 10.0 + i) for i in range(3)}
    path = tmp_path / "x.pth"
    torch.save({"meta": earlier, "state_dict": state}, path)
    ckpt = open_checkpoint(path)
    raw = path.read_bytes()
    for key, value in state.items():
        info = ckpt.tensors[key]
        assert raw[info.offset: info.offset + info.nbytes] == value.numpy().tobytes(), key
        assert torch.equal(ckpt.load_tensor(info), value)


def _rewrite_records(src, dst, edit) -> None:
    """Copy a torch archive record by record with torch's own writer, `edit(name, bytes)` deciding each record."""
    reader = torch._C.PyTorchFileReader(str(src))
    writer = torch._C.PyTorchFileWriter(str(dst))
    for name in reader.get_all_records():
        data = edit(name, reader.get_record(name))
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    del writer


def test_storage_record_shorter_than_its_tensor_is_ld206_and_never_read(tmp_path):
    """torch.load(mmap=True) reads past a short record into the next one without a word (torch.load(mmap=False)
    raises `record size ... does not match expected size`); the audit must not call the data clean."""
    from llava_doctor.api import audit

    state = {"model.layers.0.mlp.up_proj.weight": torch.arange(64, dtype=torch.float32),
             "model.norm.weight": torch.ones(16)}
    torch.save(state, tmp_path / "intact.bin")
    _rewrite_records(tmp_path / "intact.bin", tmp_path / "short.bin",
                     lambda name, data: data[:100] if name.endswith("data/0") else data)
    silently = torch.load(tmp_path / "short.bin", weights_only=True, mmap=True)  # the failure: no error at all
    assert not torch.equal(silently["model.layers.0.mlp.up_proj.weight"], state["model.layers.0.mlp.up_proj.weight"])

    ckpt = open_checkpoint(tmp_path / "short.bin")
    problems = {p.key: p for p in ckpt.integrity}
    assert "storage record short/data/0 holds 100 bytes but the tensor needs 256" in problems["model.layers.0.mlp.up_proj.weight"].detail
    assert all(t.offset is None for t in ckpt.tensors.values())
    report = audit([tmp_path / "short.bin"], deep=True)
    assert any("holds 100 bytes but the tensor needs 256" in f.message for f in report.by_code("LD206"))
    unread = report.by_code("LD204")  # the values were not checked: said, not passed as finite
    assert len(unread) == 1 and "could not be read" in unread[0].message
    intact = audit([tmp_path / "intact.bin"], deep=True)
    assert not intact.by_code("LD206") and not intact.by_code("LD204")


def test_zip_members_are_bounded_before_reading(tmp_path):
    """A deflated member (torch never compresses: a zip bomb), an oversized data.pkl, an endless opcode stream."""
    import zipfile

    from llava_doctor.artifacts import torch_format

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"N0" * (1 << 20))
    contents = read_torch_state_dict(str(bomb), file="bomb.pt")
    assert contents.failed and "is compressed" in contents.problems[0].detail
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(big, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + b"N0" * (torch_format.MAX_PICKLE_BYTES // 2))
        archive.writestr("archive/byteorder", b"little")
    contents = read_torch_state_dict(str(big), file="big.pt")
    assert contents.failed and "larger than the" in contents.problems[0].detail
    endless = io.BufferedReader(io.BytesIO(b"\x80\x02" + b"N0" * (torch_format.MAX_PICKLE_OPCODES // 2 + 1)))
    with pytest.raises(torch_format.ArchiveRefused, match="opcodes"):
        scan_pickle_globals(endless)


def test_a_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    contents = read_torch_state_dict(str(fifo), file="model.bin")  # returns at once: O_NONBLOCK + fstat
    assert contents.failed and "not a regular torch file (a FIFO)" in contents.problems[0].detail
