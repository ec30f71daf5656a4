"""`.bin/.pt/.pth` files: inspect the pickle's globals without executing anything, then load safely.

Order of operations for every file:
1. list every global the pickle would import (opcode walk with ``pickletools.genops``; for zip
   archives also ``torch.serialization.get_unsafe_globals_in_checkpoint``);
2. if any is outside :data:`ALLOWED_GLOBALS`, record an :class:`UnsafePickle` and stop;
3. otherwise ``torch.load(weights_only=True, map_location="cpu")``, memory-mapped for zip archives;
4. unwrap the usual containers (``state_dict`` / ``module`` / ``model``) and index the tensors,
   with raw byte offsets when the tensor's bytes lie contiguously in a STORED zip record.

torch is imported lazily, only when a file is actually loaded.
"""
from __future__ import annotations

import io
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .checkpoint import IntegrityProblem, TensorInfo, UnsafePickle
from .safetensors_format import printable

# Globals a plain tensor state dict needs (zip and legacy formats); everything else is refused.
_STORAGE_TYPES = (
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage", "ShortStorage",
    "CharStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage", "UntypedStorage",
    "Float8_e4m3fnStorage", "Float8_e5m2Storage",
)
_DTYPES = (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64",
)
ALLOWED_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch.Size",
        "torch.device",
        "builtins.set",
        "builtins.frozenset",
        "_codecs.encode",  # protocol-2 pickles spell bytes this way
        *(f"torch.{name}" for name in _STORAGE_TYPES),
        *(f"torch.storage.{name}" for name in ("UntypedStorage", "TypedStorage")),
        *(f"torch.{name}" for name in _DTYPES),
    }
)
# Where a state dict sits inside the common training-framework wrappers (checked in this order).
WRAPPER_KEYS = ("state_dict", "module", "model")
TORCH_TO_SAFETENSORS = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL", "complex64": "C64",
}
_LEGACY_PICKLES = 5  # magic number, protocol, sys_info, the object, storage keys (torch's legacy layout)
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_STACK_NEUTRAL_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO"})
_UNRESOLVED = "<unresolved STACK_GLOBAL>"


class PickleScanError(Exception):
    """The bytes are not a (complete) pickle; `.globals` holds what was seen before the defect."""

    def __init__(self, message: str, found: tuple[str, ...]):
        super().__init__(message)
        self.globals = found


def scan_pickle_globals(stream: io.BufferedIOBase, *, max_pickles: int = 1) -> tuple[str, ...]:
    """Every global the next `max_pickles` pickles in `stream` would import, in order, without unpickling.

    STACK_GLOBAL takes its module and name from the two previous pushes; they are tracked through
    the memo (PUT/MEMOIZE and GET), and anything not provably a pair of strings is reported as
    "<unresolved STACK_GLOBAL>" (which is never allowed). Raises PickleScanError for malformed input.
    """
    found: list[str] = []
    for number in range(max_pickles):
        if number and not stream.peek(1)[:1]:
            break
        recent: list[Any] = []  # a shadow of the stack's top: strings we know, None for anything else
        memo: dict[int, Any] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name in _STRING_OPS:
                    recent.append(arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else None)
                elif name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", ".", 1))
                    recent.append(None)
                elif name == "STACK_GLOBAL":
                    module, qualname = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
                    found.append(f"{module}.{qualname}" if isinstance(module, str) and isinstance(qualname, str) else _UNRESOLVED)
                    del recent[-2:]
                    recent.append(None)
                elif name in ("EXT1", "EXT2", "EXT4"):
                    found.append(f"<copyreg extension {arg}>")
                    recent.append(None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = recent[-1] if recent else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    recent.append(memo.get(int(arg)))
                elif name not in _STACK_NEUTRAL_OPS:
                    recent.append(None)
                del recent[:-4]
        except Exception as exc:  # genops raises ValueError/KeyError/struct.error/EOFError... on garbage
            if number == 0 or found:
                raise PickleScanError(f"not a valid pickle ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})", tuple(found)) from None
            break
    return tuple(found)


def disallowed(globals_: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({g for g in globals_ if g not in ALLOWED_GLOBALS}))


@dataclass
class TorchContents:
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    problems: list[IntegrityProblem] = field(default_factory=list)
    unsafe: UnsafePickle | None = None
    loader: Callable[[TensorInfo], Any] | None = None
    wrapper: str = ""  # e.g. "state_dict" when the tensors were found under that key
    skipped: int = 0  # non-tensor values in the state dict
    failed: bool = False
    raw: Any = None  # the loaded object (only for callers that need the non-tensor entries)


def _zip_records(path: str) -> tuple[str, dict[str, tuple[int, int]], bool]:
    """(pickle member name, {storage key: (absolute data start, size)} for STORED records, little-endian?)."""
    records: dict[str, tuple[int, int]] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
        infos = archive.infolist()
        pickles = [i.filename for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
        if len(pickles) != 1:
            raise zipfile.BadZipFile(f"expected one data.pkl record, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        little = True
        for info in infos:
            if info.filename == f"{prefix}byteorder":
                little = archive.read(info).strip() == b"little"
            if not info.filename.startswith(f"{prefix}data/") or info.compress_type != zipfile.ZIP_STORED:
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                continue
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            records[info.filename[len(f"{prefix}data/"):]] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
    return pickles[0], records, little


def inspect_globals(path: str) -> tuple[tuple[str, ...], bool]:
    """(globals the file's pickle needs, is_zip). Raises PickleScanError / zipfile.BadZipFile / OSError."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise zipfile.BadZipFile(f"a zip archive without exactly one data.pkl (found {len(pickles)})")
            with archive.open(pickles[0]) as member:
                found = scan_pickle_globals(io.BufferedReader(member))
        import torch.serialization

        try:  # torch's own view; anything it calls unsafe is unsafe too
            found += tuple(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            pass
        return found, True
    with open(path, "rb") as fh:
        if fh.read(4) == b"PK\x03\x04":
            raise zipfile.BadZipFile("zip archive without its central directory: truncated (an interrupted save or copy)")
        fh.seek(0)
        return scan_pickle_globals(io.BufferedReader(fh), max_pickles=_LEGACY_PICKLES), False


def load_checked(path: str, *, file: str) -> TorchContents:
    """Check a torch file's globals, then load it with weights_only=True; `raw` holds the object."""
    contents = TorchContents()
    fail = lambda kind, detail: (contents.problems.append(IntegrityProblem(kind, file, detail)), setattr(contents, "failed", True))  # noqa: E731
    try:
        found, is_zip = inspect_globals(path)
    except PickleScanError as exc:
        bad = disallowed(exc.globals)
        if bad:
            contents.unsafe = UnsafePickle(file, bad)
        fail("unreadable", f"{exc}; not a PyTorch checkpoint")
        return contents
    except zipfile.BadZipFile as exc:
        fail("truncated" if "central directory" in str(exc) or "truncated" in str(exc).lower() else "unreadable", f"broken zip archive ({exc})")
        return contents
    except (OSError, EOFError, RuntimeError, ValueError) as exc:
        fail("unreadable", f"cannot read ({' '.join(str(exc).split())[:160]})")
        return contents
    bad = disallowed(found)
    if bad:
        contents.unsafe = UnsafePickle(file, bad)
        contents.failed = True
        return contents

    import torch

    try:
        obj = torch.load(path, weights_only=True, mmap=is_zip, map_location="cpu")
    except Exception as exc:  # truncated data records, bad magic number, a storage past the end...
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        fail("truncated" if "central directory" in first or "truncated" in first or "unexpected EOF" in first else "unreadable", f"torch.load(weights_only=True) failed: {first}")
        return contents
    contents.raw = obj
    return contents


def unwrap_state_dict(obj: Any) -> tuple[Mapping[str, Any] | None, str]:
    """Find the tensor mapping inside XTuner/mmengine `state_dict`, DeepSpeed `module` and `model` wrappers."""
    import torch

    path: list[str] = []
    while isinstance(obj, Mapping):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, ".".join(path)
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                path.append(key)
                break
        else:
            return obj, ".".join(path)
    return None, ".".join(path)


def tensor_table(
    state: Mapping[str, Any], *, file: str, records: dict[str, tuple[int, int]] | None = None
) -> tuple[dict[str, TensorInfo], int]:
    """TensorInfo for every tensor value (non-tensors are counted, not indexed). Offsets when `records` allow."""
    import torch

    tensors = {k: v for k, v in state.items() if isinstance(k, str) and k.isprintable() and isinstance(v, torch.Tensor)}
    skipped = len(state) - len(tensors)
    starts = _storage_starts(tensors, records) if records else {}
    table: dict[str, TensorInfo] = {}
    for key, value in tensors.items():
        dtype = TORCH_TO_SAFETENSORS.get(str(value.dtype).removeprefix("torch."))
        if dtype is None:
            skipped += 1
            continue
        offset, nbytes = None, (0 if value.numel() == 0 else None)
        start = starts.get(_storage_ptr(value))
        if start is not None and value.is_contiguous():
            offset = start + value.storage_offset() * value.element_size()
            nbytes = value.numel() * value.element_size()
        table[key] = TensorInfo(name=key, shape=tuple(value.shape), dtype=dtype, file=file, offset=offset, nbytes=nbytes)
    return table, skipped


def _storage_ptr(tensor: Any) -> int:
    storage = tensor.untyped_storage()
    return storage.data_ptr() if storage.nbytes() else 0


def _storage_starts(tensors: Mapping[str, Any], records: dict[str, tuple[int, int]]) -> dict[int, int]:
    """Map storage data pointers to file offsets of an mmap-loaded zip.

    torch maps the whole file once and slices each record from that mapping, so every storage's
    pointer is `base + record start`. The base is found from the lowest pointer and verified for
    every storage (size included); if anything disagrees, nothing is addressable.
    """
    sizes: dict[int, int] = {}
    for tensor in tensors.values():
        storage = tensor.untyped_storage()
        if storage.nbytes():
            sizes[storage.data_ptr()] = storage.nbytes()
    spans = sorted((start, size) for start, size in records.values() if size)
    if not sizes or len(sizes) > len(spans):
        return {}
    by_start = dict(spans)
    lowest = min(sizes)
    for candidate, _ in spans:  # the lowest storage is some record; the first base that explains all wins
        base = lowest - candidate
        if all(by_start.get(ptr - base) == size for ptr, size in sizes.items()):
            return {ptr: ptr - base for ptr in sizes}
    return {}


def read_torch_state_dict(path: str, *, file: str) -> TorchContents:
    """The tensors of one `.bin/.pt/.pth` state dict file (after the globals check)."""
    contents = load_checked(path, file=file)
    if contents.failed:
        return contents
    state, contents.wrapper = unwrap_state_dict(contents.raw)
    if state is None:
        contents.problems.append(
            IntegrityProblem("unreadable", file, f"holds a {type(contents.raw).__name__}, not a state dict of tensors")
        )
        contents.raw = None
        return contents
    records = None
    try:
        if zipfile.is_zipfile(path):
            _, records, little = _zip_records(path)
            records = records if little else None
    except (OSError, zipfile.BadZipFile):
        records = None
    contents.tensors, contents.skipped = tensor_table(state, file=file, records=records)
    for key in [k for k in state if isinstance(k, str) and not k.isprintable()][:5]:
        contents.problems.append(IntegrityProblem("bad-header", file, f"key {printable(key)}: name contains control characters; not indexed", printable(key)))
    loaded = {k: v for k, v in state.items() if k in contents.tensors}
    contents.loader = lambda info: loaded[info.name]
    contents.raw = None
    return contents
