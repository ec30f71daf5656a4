"""`.bin/.pt/.pth` files: inspect the pickle's globals without executing anything, then load safely.

Order of operations for every file:
1. list every global the pickle would import (opcode walk with ``pickletools.genops``; for zip
   archives also ``torch.serialization.get_unsafe_globals_in_checkpoint``);
2. if any is outside :data:`ALLOWED_GLOBALS`, record an :class:`UnsafePickle` and stop;
3. otherwise ``torch.load(weights_only=True)``: a zip archive onto the meta device (no tensor data
   is read; torch records each storage's file offset), a legacy file into memory;
4. unwrap the usual containers (``state_dict`` / ``module`` / ``model``) and index the tensors,
   with raw byte offsets for contiguous tensors of little-endian zip archives; the data of any
   tensor is available through a loader that memory-maps the archive on first use.

torch is imported lazily, only when a file is actually loaded.
"""
from __future__ import annotations

import io
import os
import pickletools
import zipfile
from dataclasses import dataclass, field, replace
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
    is_zip: bool = False
    raw: Any = None  # the loaded object (only for callers that need the non-tensor entries)


def _zip_is_little_endian(path: str) -> bool:
    """torch byte-swaps records of a big-endian archive on load; their raw bytes are then not addressable."""
    with zipfile.ZipFile(path) as archive:
        orders = [n for n in archive.namelist() if n.endswith("/byteorder") or n == "byteorder"]
        return not orders or archive.read(orders[0]).strip() == b"little"


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


def load_checked(path: str, *, file: str, metadata_only: bool = False) -> TorchContents:
    """Check a torch file's globals, then load it with weights_only=True; `raw` holds the object.

    With `metadata_only`, a zip archive is loaded onto the meta device: no tensor data is read, and
    torch records each storage's absolute file offset in ``storage._checkpoint_offset``.
    """
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
        if is_zip and metadata_only:
            obj = torch.load(path, weights_only=True, map_location="meta")
        else:
            obj = torch.load(path, weights_only=True, mmap=is_zip, map_location="cpu")
    except Exception as exc:  # truncated data records, bad magic number, a storage past the end...
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        fail("truncated" if "central directory" in first or "truncated" in first or "unexpected EOF" in first else "unreadable", f"torch.load(weights_only=True) failed: {first}")
        return contents
    contents.raw = obj
    contents.is_zip = is_zip
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


def tensor_table(state: Mapping[str, Any], *, file: str, file_size: int | None = None) -> tuple[dict[str, TensorInfo], int]:
    """TensorInfo for every tensor value (non-tensors are counted, not indexed).

    Tensors from a meta-device load carry their storage's file offset; a contiguous one gets
    `offset`/`nbytes` (checked against `file_size`), others are reachable only through a loader.
    """
    import torch

    tensors = {k: v for k, v in state.items() if isinstance(k, str) and k.isprintable() and isinstance(v, torch.Tensor)}
    skipped = len(state) - len(tensors)
    table: dict[str, TensorInfo] = {}
    for key, value in tensors.items():
        dtype = TORCH_TO_SAFETENSORS.get(str(value.dtype).removeprefix("torch."))
        if dtype is None:
            skipped += 1
            continue
        nbytes = value.numel() * value.element_size()
        start = getattr(value.untyped_storage(), "_checkpoint_offset", None)
        offset = None
        if isinstance(start, int) and nbytes and value.is_contiguous():
            offset = start + value.storage_offset() * value.element_size()
            if file_size is not None and offset + nbytes > file_size:
                offset = None
        table[key] = TensorInfo(
            name=key, shape=tuple(value.shape), dtype=dtype, file=file, offset=offset,
            nbytes=nbytes if offset is not None or not nbytes else None,
        )
    return table, skipped


def lazy_loader(path: str, wrapper: str) -> Callable[[TensorInfo], Any]:
    """Tensors of a checked zip archive, memory-mapped on first use (weights_only=True again)."""
    cache: dict[str, Any] = {}

    def load(info: TensorInfo) -> Any:
        if "state" not in cache:
            import torch

            obj = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
            for key in wrapper.split(".") if wrapper else ():
                obj = obj[key]
            cache["state"] = obj
        return cache["state"][info.name]

    return load


def read_torch_state_dict(path: str, *, file: str) -> TorchContents:
    """The tensors of one `.bin/.pt/.pth` state dict file (after the globals check), without reading zip data."""
    contents = load_checked(path, file=file, metadata_only=True)
    if contents.failed:
        return contents
    state, contents.wrapper = unwrap_state_dict(contents.raw)
    held, contents.raw = type(contents.raw).__name__, None
    if state is None:
        contents.problems.append(IntegrityProblem("unreadable", file, f"holds a {held}, not a state dict of tensors"))
        return contents
    addressable = contents.is_zip and _zip_is_little_endian(path)
    file_size = os.path.getsize(path)
    contents.tensors, contents.skipped = tensor_table(state, file=file, file_size=file_size)
    if not addressable:
        contents.tensors = {k: replace(t, offset=None, nbytes=None if t.nbytes else 0) for k, t in contents.tensors.items()}
    for key in [k for k in state if isinstance(k, str) and not k.isprintable()][:5]:
        contents.problems.append(IntegrityProblem("bad-header", file, f"key {printable(key)}: name contains control characters; not indexed", printable(key)))
    if contents.is_zip:
        contents.loader = lazy_loader(path, contents.wrapper)
    else:
        loaded = {k: v for k, v in state.items() if k in contents.tensors}
        contents.loader = lambda info: loaded[info.name]
    return contents
