"""`.bin/.pt/.pth` files: inspect the pickle's globals without executing anything, then load safely.

Order of operations for every file:
0. bound the work before anything is read: only a regular file is opened; a zip archive's
   members must be stored (torch never compresses, so a deflate bomb is refused unread), its
   ``data.pkl`` at most :data:`MAX_PICKLE_BYTES`, its member count bounded; a legacy file's pickles
   are read through a reader that stops at the same limit;
1. list every global the pickle would import (opcode walk with ``pickletools.genops``; for zip
   archives also ``torch.serialization.get_unsafe_globals_in_checkpoint``);
2. if any is outside :data:`ALLOWED_GLOBALS`, record an :class:`UnsafePickle` and stop;
3. otherwise ``torch.load(weights_only=True)``: a zip archive onto the meta device (no tensor data
   is read; torch records each storage's file offset), a legacy file into memory;
4. unwrap the usual containers (``state_dict`` / ``module`` / ``model``) and index the tensors,
   with raw byte offsets for contiguous tensors of little-endian zip archives; the data of any
   tensor is available through a loader that memory-maps the archive on first use;
5. check every storage against the record that holds it: a record shorter than its storage
   would be read past its end by an mmap load (torch does not check), so the tensor becomes a
   "truncated" problem and its data is never read.

torch is imported lazily, only when a file is actually loaded.
"""
from __future__ import annotations

import io
import os
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field, replace
from typing import IO, Any, Callable, Iterable, Mapping

from ..files import MiB, open_regular
from ..findings import InputError, one_line
from .checkpoint import IntegrityProblem, TensorInfo, UnsafePickle
from .safetensors_format import printable

# A state dict's pickle holds names and shapes only: ~200 bytes per tensor (a 70B model: ~200 KB).
# The limit bounds both the opcode walk and what torch's unpickler builds in memory.
MAX_PICKLE_BYTES = 16 * MiB
# The opcode walk runs in Python (~1 µs per opcode): a state dict needs ~15 opcodes per tensor.
MAX_PICKLE_OPCODES = 2_000_000
MAX_ZIP_MEMBERS = 200_000  # one record per storage; zipfile keeps ~0.5 KB per member in memory
# A legacy (pre-1.6, non-zip) file cannot be memory-mapped: torch.load reads all of it into memory.
MAX_LEGACY_BYTES = 4 * 1024 * MiB
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header (30 bytes)

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


class ArchiveRefused(Exception):
    """A torch file whose structure would make reading it unbounded; nothing of it is loaded."""


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
    opcodes = 0
    for number in range(max_pickles):
        if number and not stream.peek(1)[:1]:
            break
        recent: list[Any] = []  # a shadow of the stack's top: strings we know, None for anything else
        memo: dict[int, Any] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                opcodes += 1
                if opcodes > MAX_PICKLE_OPCODES:
                    raise ArchiveRefused(f"its pickle goes on past {MAX_PICKLE_OPCODES:,} opcodes, more than a state "
                                         "dict needs")
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
        except ArchiveRefused:
            raise
        except Exception as exc:  # genops raises ValueError/KeyError/struct.error/EOFError... on garbage
            if number == 0 or found:
                raise PickleScanError(f"not a valid pickle ({type(exc).__name__}: {one_line(exc, 120)})", tuple(found)) from None
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
    records: dict[int, "Record"] = field(default_factory=dict)  # zip data records by the offset of their data
    little_endian: bool = True


@dataclass(frozen=True)
class Record:
    """One stored member of a torch zip archive: where its data starts in the file and how long it is."""

    name: str
    start: int
    size: int


class _Bounded(io.RawIOBase):
    """A read-only view of `raw` that refuses to go past `limit` bytes (the pickle walk of a legacy file)."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw, self.left, self.limit = raw, limit, limit

    def readable(self) -> bool:
        return True

    def tell(self) -> int:  # pickletools.genops asks for positions
        return self.limit - self.left

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise ArchiveRefused(f"its pickles go on past {self.limit:,} bytes, the limit for a state dict's pickle")
        view = memoryview(buffer)[: self.left]
        got = self.raw.readinto(view)
        self.left -= got or 0
        return got or 0


def _zip_member_count(fh: IO[bytes]) -> int | None:
    """The entry count the end-of-central-directory record declares (None if it cannot be read)."""
    try:
        end = zipfile._EndRecData(fh)  # the stdlib's own EOCD reader (zip64 aware), without reading the directory
    except Exception:
        return None
    return int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else None


def _zip_records(archive: zipfile.ZipFile, fh: IO[bytes], size: int) -> dict[str, Record]:
    """Every member of a torch archive, refused unless reading it is bounded (stored, inside the file)."""
    records: dict[str, Record] = {}
    for info in archive.infolist():
        name = printable(info.filename)
        if info.compress_type != zipfile.ZIP_STORED:
            raise ArchiveRefused(f"member {name} is compressed (method {info.compress_type}); torch stores members "
                                 "uncompressed, so it is not read")
        if info.file_size != info.compress_size:
            raise ArchiveRefused(f"member {name} declares {info.file_size:,} bytes but stores {info.compress_size:,}")
        fh.seek(info.header_offset)
        header = fh.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"member {name}: no local header at offset {info.header_offset}")
        fields = _LOCAL_HEADER.unpack(header)
        start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        if start + info.file_size > size:
            raise zipfile.BadZipFile(f"member {name} ends at byte {start + info.file_size:,}, past the end of the "
                                     f"{size:,}-byte file: truncated")
        is_data = "/data/" in "/" + info.filename
        limit = MAX_PICKLE_BYTES
        if not is_data and info.file_size > limit:
            raise ArchiveRefused(f"member {name} is {info.file_size:,} bytes, larger than the {limit:,}-byte limit "
                                 "for a state dict's pickle and metadata")
        records[info.filename] = Record(info.filename, start, info.file_size)
    return records


def _open_archive(fh: IO[bytes], size: int) -> tuple[zipfile.ZipFile, dict[str, Record]]:
    count = _zip_member_count(fh)
    if count is not None and count > MAX_ZIP_MEMBERS:
        raise ArchiveRefused(f"its zip directory declares {count:,} members, more than the {MAX_ZIP_MEMBERS:,} "
                             "a state dict needs")
    fh.seek(0)
    archive = zipfile.ZipFile(fh)
    return archive, _zip_records(archive, fh, size)


def inspect_globals(path: str) -> tuple[tuple[str, ...], bool]:
    """(globals the file's pickle needs, is_zip). Raises PickleScanError / ArchiveRefused / zipfile.BadZipFile /
    InputError (not a regular file) / OSError."""
    with open_regular(path, what="torch file") as fh:
        size = os.fstat(fh.fileno()).st_size
        if zipfile.is_zipfile(fh):
            archive, _ = _open_archive(fh, size)
            with archive:
                pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if len(pickles) != 1:
                    raise zipfile.BadZipFile(f"a zip archive without exactly one data.pkl (found {len(pickles)})")
                with archive.open(pickles[0]) as member:
                    found = scan_pickle_globals(io.BufferedReader(member))
            is_zip = True
        else:
            fh.seek(0)
            if fh.read(4) == b"PK\x03\x04":
                raise zipfile.BadZipFile("zip archive without its central directory: truncated (an interrupted save or copy)")
            fh.seek(0)
            if size > MAX_LEGACY_BYTES:
                raise ArchiveRefused(f"legacy (non-zip) torch format of {size:,} bytes: torch.load would read all of it "
                                     f"into memory (limit {MAX_LEGACY_BYTES:,}); re-save it with a current torch")
            stream = io.BufferedReader(_Bounded(fh, MAX_PICKLE_BYTES))
            return scan_pickle_globals(stream, max_pickles=_LEGACY_PICKLES), False
    import torch.serialization

    try:  # torch's own view; anything it calls unsafe is unsafe too (data.pkl is bounded above)
        found += tuple(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        pass
    return found, is_zip


def _zip_layout(path: str) -> tuple[dict[int, Record], bool]:
    """(data records by the file offset of their data, little-endian) of an archive inspect_globals accepted."""
    with open_regular(path, what="torch file") as fh, zipfile.ZipFile(fh) as archive:
        records = _zip_records(archive, fh, os.fstat(fh.fileno()).st_size)
        orders = [r for n, r in records.items() if n.endswith("/byteorder") or n == "byteorder"]
        little = True
        if orders and orders[0].size <= 16:
            fh.seek(orders[0].start)
            little = fh.read(orders[0].size).strip() == b"little"
    return {r.start: r for n, r in records.items() if "/data/" in "/" + n}, little


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
    except ArchiveRefused as exc:
        fail("unreadable", f"not loaded: {exc}")
        return contents
    except InputError as exc:
        fail("unreadable", str(exc).removeprefix(f"{path}: "))
        return contents
    except zipfile.BadZipFile as exc:
        fail("truncated" if "central directory" in str(exc) or "truncated" in str(exc).lower() else "unreadable", f"broken zip archive ({exc})")
        return contents
    except (OSError, EOFError, RuntimeError, ValueError) as exc:
        fail("unreadable", f"cannot read ({one_line(exc, 160)})")
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
        first = one_line(exc, 200)
        fail("truncated" if "central directory" in first or "truncated" in first or "unexpected EOF" in first else "unreadable", f"torch.load(weights_only=True) failed: {first}")
        return contents
    contents.raw = obj
    contents.is_zip = is_zip
    if is_zip:
        try:
            contents.records, contents.little_endian = _zip_layout(path)
        except (ArchiveRefused, zipfile.BadZipFile, InputError, OSError) as exc:
            fail("unreadable", f"zip archive changed while being read ({one_line(exc, 160)})")
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


def storage_problems(state: Mapping[str, Any], records: Mapping[int, Record], *, file: str) -> dict[str, IntegrityProblem]:
    """Tensors whose storage the archive does not hold in full (key -> 'truncated' problem).

    A meta-device load gives each storage its declared size and the offset torch computed for it;
    the record at that offset must exist and be at least that long, and the tensor's elements
    must lie inside it. An mmap load does not check this and reads past the record.
    """
    import torch

    problems: dict[str, IntegrityProblem] = {}
    for key, value in state.items():
        if not (isinstance(key, str) and key.isprintable() and isinstance(value, torch.Tensor)):
            continue
        storage = value.untyped_storage()
        start = getattr(storage, "_checkpoint_offset", None)
        if not isinstance(start, int):
            continue
        need = storage.nbytes()
        if value.numel():
            span = 1 + sum((size - 1) * stride for size, stride in zip(value.shape, value.stride()))
            need = max(need, (value.storage_offset() + span) * value.element_size())
        record = records.get(start)
        if record is None:
            if need:
                problems[key] = IntegrityProblem(
                    "truncated", file, f"tensor {key}: no storage record starts at byte {start:,} where torch looks "
                    f"for its {need:,} bytes (a record before it is shorter than declared)", key)
        elif record.size < need:
            problems[key] = IntegrityProblem(
                "truncated", file, f"tensor {key}: storage record {printable(record.name)} holds {record.size:,} bytes "
                f"but the tensor needs {need:,}; an mmap load reads past the record's end", key)
    return problems


def lazy_loader(path: str, wrapper: str, refused: Mapping[str, str] | None = None) -> Callable[[TensorInfo], Any]:
    """Tensors of a checked zip archive, memory-mapped on first use (weights_only=True again).

    `refused` maps keys whose data the archive does not hold in full to why: they are never read.
    """
    cache: dict[str, Any] = {}
    refused = dict(refused or {})

    def load(info: TensorInfo) -> Any:
        if info.name in refused:
            raise ValueError(refused[info.name])
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
    addressable = contents.is_zip and contents.little_endian
    file_size = os.path.getsize(path)
    contents.tensors, contents.skipped = tensor_table(state, file=file, file_size=file_size)
    short = storage_problems(state, contents.records, file=file) if contents.is_zip else {}
    contents.problems.extend(short.values())
    if not addressable or short:
        contents.tensors = {
            k: replace(t, offset=None, nbytes=None if t.nbytes else 0) if not addressable or k in short else t
            for k, t in contents.tensors.items()
        }
    for key in [k for k in state if isinstance(k, str) and not k.isprintable()][:5]:
        contents.problems.append(IntegrityProblem("bad-header", file, f"key {printable(key)}: name contains control characters; not indexed", printable(key)))
    if contents.is_zip:
        contents.loader = lazy_loader(path, contents.wrapper, {k: p.detail for k, p in short.items()})
    else:
        loaded = {k: v for k, v in state.items() if k in contents.tensors}
        contents.loader = lambda info: loaded[info.name]
    return contents
