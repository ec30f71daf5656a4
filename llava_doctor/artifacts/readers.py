"""`open_checkpoint`: the single entry point that turns a path into a :class:`Checkpoint`.

Reads headers, indexes, configs and (for pickled formats) the tensor table; never tensor data of
safetensors files, never a pickle whose globals are outside the allow-list, never writes. Input
that cannot be read at all raises :class:`InputError` (one line); defects inside a readable input
are recorded as IntegrityProblem / UnsafePickle entries for LD206 / LD207.
"""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import files as bounded
from .. import layout as layouts
from ..findings import InputError, one_line
from .checkpoint import DTYPE_SIZES, Checkpoint, CheckpointFile, FileHoles, IntegrityProblem, TensorInfo, UnsafePickle
from .holes import file_holes
from .safetensors_format import parse_index, read_header, reconcile_index

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
INDEX_SUFFIX = ".index.json"
# Reads are bounded before they start (DESIGN.md §5). Real configs are a few KB and the largest
# public shard indexes about 10 MB; json.loads costs ~15x the bytes in the worst case.
MAX_CONFIG_BYTES = 8 * bounded.MiB  # config.json, adapter_config.json, a vision tower's config.json
MAX_INDEX_BYTES = 32 * bounded.MiB  # *.index.json
MODEL_STATES = re.compile(r"^(?:zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt$")
OPTIM_STATES = re.compile(r"optim_states\.pt$")
GLOBAL_STEP = re.compile(r"^global_step\d+$")
TRAINER_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # HF Trainer's intermediate save folders


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint file or directory (see layout.LAYOUTS) without loading tensor data."""
    name = os.fspath(path)
    mode = bounded.stat_path(name).st_mode
    if stat.S_ISDIR(mode):
        return _open_directory(os.path.abspath(name), name)
    if not stat.S_ISREG(mode):
        raise InputError(f"{name}: not a regular file or directory ({bounded.file_type(mode)})")
    return _open_single_file(os.path.abspath(name), name)


def audit_targets(path: str | os.PathLike) -> list[str]:
    """What auditing `path` means: the path itself, or for an HF Trainer ``output_dir`` (final weights
    beside ``checkpoint-N/`` folders) the final weights and the latest checkpoint.

    The top level is kept when it holds weights, a DeepSpeed checkpoint or the ``config.json`` that
    ``save_model`` writes (a folder users will ``from_pretrained``); the latest checkpoint is the one
    with the highest N.
    """
    name = os.fspath(path)
    try:
        if not stat.S_ISDIR(os.stat(name).st_mode):
            return [name]
    except OSError:
        return [name]  # open_checkpoint says why, in one line
    try:
        listing = _listing(name)
    except InputError:
        return [name]  # open_checkpoint says why, in one line
    steps = sorted((int(m.group(1)), d) for d in listing.dirs if (m := TRAINER_CHECKPOINT.match(d))
                   and _has_entries(os.path.join(name, d)))
    if not steps:
        return [name]
    indexes, weights = _weight_files(listing.files)
    top = bool(indexes or weights or "config.json" in listing.files or _is_deepspeed_dir(name, listing.files, listing.dirs))
    latest = os.path.join(name, steps[-1][1])
    return [name, latest] if top else [latest]


# ---------------------------------------------------------------------------------------------
# path checks


@dataclass
class _Listing:
    """One directory's entries: regular files (after links) -> size, other files -> what they are, sub-folders."""

    files: dict[str, int] = field(default_factory=dict)
    special: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)


def _listing(directory: str) -> _Listing:
    try:
        names = sorted(os.listdir(directory))
    except PermissionError:
        raise InputError(f"{directory}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{directory}: cannot list ({exc.strerror or exc})") from None
    listing = _Listing()
    for entry in names:
        try:
            st = bounded.stat_path(os.path.join(directory, entry))
        except InputError as exc:  # dangling link, loop, no permission
            listing.special[entry] = str(exc).rsplit(": ", 1)[-1]
            continue
        if stat.S_ISREG(st.st_mode):
            listing.files[entry] = st.st_size
        elif stat.S_ISDIR(st.st_mode):
            listing.dirs.append(entry)
        else:
            listing.special[entry] = bounded.file_type(st.st_mode)
    return listing


def _list_files(directory: str) -> dict[str, int]:
    """Regular files directly inside `directory` -> size; special files and broken links are left out."""
    return _listing(directory).files


def _has_entries(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _list_dirs(directory: str) -> list[str]:
    try:
        return _listing(directory).dirs
    except InputError:
        return []


def _would_read(name: str) -> bool:
    """A directory entry a reader would open if it were a regular file."""
    return file_kind(name) != "other" or name == "latest" or name.endswith(".json")


def _special_problems(listing: _Listing, prefix: str = "") -> list[IntegrityProblem]:
    """Entries named like something a reader opens that are not regular files: refused, never opened."""
    return [
        IntegrityProblem("unreadable", prefix + entry, f"not a regular file ({what}); not opened")
        for entry, what in sorted(listing.special.items()) if _would_read(entry)
    ]


def file_kind(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base.endswith(INDEX_SUFFIX):
        return "index"
    if base.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if MODEL_STATES.match(base):
        return "deepspeed-model-states"
    if OPTIM_STATES.search(base):
        return "deepspeed-optim-states"
    if base.endswith(TORCH_SUFFIXES):
        return "torch"
    if base == "adapter_config.json":
        return "adapter-config"
    if base == "config.json":
        return "config"
    return "other"


# ---------------------------------------------------------------------------------------------
# building a Checkpoint


@dataclass
class _Builder:
    root: str
    name: str
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    files: dict[str, CheckpointFile] = field(default_factory=dict)
    integrity: list[IntegrityProblem] = field(default_factory=list)
    unsafe: list[UnsafePickle] = field(default_factory=list)
    weight_kinds: set[str] = field(default_factory=set)
    loaders: dict[str, Callable[[TensorInfo], Any]] = field(default_factory=dict)  # file -> loader
    file_tensors: dict[str, int] = field(default_factory=dict)
    holes: dict[str, FileHoles] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def add_file(self, rel: str, size: int) -> None:
        self.files[rel] = CheckpointFile(path=rel, size=size, kind=file_kind(rel))

    def add_tensors(self, infos: dict[str, TensorInfo]) -> None:
        for key, info in infos.items():
            if key in self.tensors:
                self.integrity.append(
                    IntegrityProblem(
                        "duplicate-key", info.file,
                        f"key {key} is in both {self.tensors[key].file} and {info.file}; which one wins depends on the loader",
                        key,
                    )
                )
                continue
            self.tensors[key] = info

    def read_safetensors(self, rel: str) -> tuple[str, ...] | None:
        """Index one safetensors file's header; returns its declared keys (None if unreadable)."""
        self.weight_kinds.add("safetensors")
        try:
            header = read_header(os.path.join(self.root, rel), file=rel)
        except InputError as exc:
            self.integrity.append(IntegrityProblem("unreadable", rel, _reason(exc, os.path.join(self.root, rel))))
            return None
        except OSError as exc:
            self.integrity.append(IntegrityProblem("unreadable", rel, f"cannot read: {exc.strerror or exc}"))
            return None
        self.integrity.extend(header.problems)
        self.add_tensors(header.tensors)
        if header.metadata:
            self.notes.setdefault("safetensors_metadata", {})[rel] = header.metadata
        if not header.problems:
            self._read_ok(rel, len(header.declared_keys))
        return header.declared_keys

    def read_torch(self, rel: str) -> tuple[str, ...] | None:
        from .torch_format import read_torch_state_dict

        self.weight_kinds.add("torch")
        contents = read_torch_state_dict(os.path.join(self.root, rel), file=rel)
        self.integrity.extend(contents.problems)
        if contents.unsafe is not None:
            self.unsafe.append(contents.unsafe)
        self.add_tensors(contents.tensors)
        if contents.loader is not None:
            self.loaders[rel] = contents.loader
        if contents.wrapper:
            self.notes.setdefault("state_dict_wrappers", {})[rel] = contents.wrapper
        if contents.skipped:
            self.notes.setdefault("non_tensor_entries", {})[rel] = contents.skipped
        if contents.unsafe is not None or contents.failed:
            return None
        self._read_ok(rel, len(contents.tensors))
        return tuple(contents.tensors)

    def _read_ok(self, rel: str, tensors: int) -> None:
        """A weight file read without defects: how many tensors it holds, and where it has holes."""
        self.file_tensors[rel] = tensors
        holes, cut = file_holes(os.path.join(self.root, rel))
        if holes:
            self.holes[rel] = FileHoles(tuple(holes), cut)

    def read_weights(self, rel: str) -> tuple[str, ...] | None:
        return self.read_safetensors(rel) if rel.endswith(SAFETENSORS_SUFFIX) else self.read_torch(rel)

    def read_index(self, rel: str) -> None:
        """A sharded checkpoint: the index, every shard it names, and unnamed sibling shards."""
        path = os.path.join(self.root, rel)
        folder = os.path.dirname(rel)
        prefix = f"{folder}/" if folder else ""
        text = read_limited(path, rel, self.integrity, limit=MAX_INDEX_BYTES, what="shard index")
        if text is None:
            return
        index = parse_index(text, file=rel)
        self.integrity.extend(index.problems)
        self.notes["index"] = {"file": rel, "metadata": index.metadata, "shards": index.shards()}
        weights_suffix = rel[: -len(INDEX_SUFFIX)].rsplit(".", 1)[-1]  # "safetensors" or "bin"
        shard_keys: dict[str, tuple[str, ...] | None] = {}
        before = dict(self.tensors)
        for shard in index.shards():
            shard_rel = f"{prefix}{shard}"
            size = self._shard_size(shard_rel)
            if size is None:
                shard_keys[shard] = None
                continue
            self.add_file(shard_rel, size)
            shard_keys[shard] = self._shard_keys(shard_rel, index.weight_map, shard)
        # sibling shards the index forgot (same stem pattern, e.g. model-00003-of-00003.safetensors)
        for sibling, size in _list_files(os.path.join(self.root, folder) if folder else self.root).items():
            if sibling not in shard_keys and re.search(r"-\d+-of-\d+\." + re.escape(weights_suffix) + "$", sibling):
                self.add_file(f"{prefix}{sibling}", size)
                shard_keys[sibling] = self._shard_keys(f"{prefix}{sibling}", index.weight_map, sibling)
        total = sum(t.nbytes or t.numel * _itemsize(t.dtype) for k, t in self.tensors.items() if k not in before)
        if not index.weight_map and index.problems:  # an unusable index: its own problem says enough
            return
        problems = reconcile_index(index, shard_keys, prefix=prefix, total_bytes=total)
        # read_weights already recorded cross-file duplicates; keep the index's more precise wording only
        dup_keys = {p.key for p in problems if p.kind == "duplicate-key"}
        self.integrity = [p for p in self.integrity if not (p.kind == "duplicate-key" and p.key in dup_keys)]
        self.integrity.extend(problems)

    def _shard_size(self, shard_rel: str) -> int | None:
        """Size of a shard the index names; None when absent (reconciled later) or not a regular file (a problem now)."""
        path = os.path.join(self.root, shard_rel)
        try:
            return bounded.regular_file_size(path, what="shard")
        except InputError as exc:
            if os.path.lexists(path):
                self.integrity.append(IntegrityProblem("unreadable", shard_rel, _reason(exc, path)))
            return None

    def _shard_keys(self, shard_rel: str, weight_map: dict[str, str], shard: str) -> tuple[str, ...]:
        # a shard that exists but could not be read (already a problem of its own) is not reconciled
        keys = self.read_weights(shard_rel)
        return keys if keys is not None else tuple(k for k, s in weight_map.items() if s == shard)

    def build(self, *, config: dict | None, adapter_config: dict | None, fmt: str | None = None) -> Checkpoint:
        kinds = self.weight_kinds
        if fmt is None:
            if adapter_config is not None or any(f.startswith("adapter_model.") for f in self.files):
                fmt = "peft"
            elif not self.tensors and not kinds:
                fmt = "empty"
            elif len(kinds) > 1:
                fmt = "mixed"
            elif kinds == {"safetensors"}:
                fmt = "safetensors-sharded" if "index" in self.notes else "safetensors"
            else:
                fmt = "torch"
        layout = layouts.detect_layout(self.tensors, config, self.files)
        tensors = {
            key: _with_component(info, layouts.component_of(key, layout)) for key, info in sorted(self.tensors.items())
        }
        loaders = dict(self.loaders)
        checkpoint = Checkpoint(
            root=self.root,
            name=self.name,
            format=fmt,
            layout=layout,
            tensors=tensors,
            config=config,
            config_kind=layouts.config_kind(config),
            files=[self.files[k] for k in sorted(self.files)],
            integrity=self.integrity,
            unsafe=self.unsafe,
            adapter_config=adapter_config,
            file_tensors=dict(self.file_tensors),
            holes=dict(self.holes),
            notes=self.notes,
            loader=_dispatching_loader(loaders) if loaders else None,
        )
        return checkpoint


def _with_component(info: TensorInfo, component: str) -> TensorInfo:
    if info.component == component:
        return info
    return TensorInfo(info.name, info.shape, info.dtype, info.file, component, info.offset, info.nbytes)


def _dispatching_loader(loaders: dict[str, Callable[[TensorInfo], Any]]) -> Callable[[TensorInfo], Any]:
    def load(info: TensorInfo) -> Any:
        loader = loaders.get(info.file)
        if loader is None:
            raise KeyError(f"no loader for {info.file}")
        return loader(info)

    return load


def _itemsize(dtype: str) -> int:
    return DTYPE_SIZES.get(dtype, 0)


def _reason(exc: InputError, path: str) -> str:
    """An InputError's text without the path it starts with (an IntegrityProblem names the file itself)."""
    return str(exc).removeprefix(f"{path}: ")


def read_limited(path: str, rel: str, integrity: list[IntegrityProblem], *, limit: int, what: str) -> bytes | None:
    """A small regular file's bytes (size checked before reading); None, with an 'unreadable' problem, otherwise."""
    try:
        return bounded.read_bytes(path, limit=limit, what=what)
    except InputError as exc:
        integrity.append(IntegrityProblem("unreadable", rel, _reason(exc, path)))
        return None


def read_json_object(path: str, rel: str, integrity: list[IntegrityProblem]) -> dict | None:
    """A JSON object file (config.json, adapter_config.json); defects become 'bad-config' problems."""
    data = read_limited(path, rel, integrity, limit=MAX_CONFIG_BYTES, what="config file")
    if data is None:
        return None
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        integrity.append(IntegrityProblem("bad-config", rel, f"not valid UTF-8 JSON ({one_line(exc, 160)})"))
        return None
    if not isinstance(parsed, dict):
        integrity.append(IntegrityProblem("bad-config", rel, f"a JSON {type(parsed).__name__}, expected an object"))
        return None
    return parsed


def _read_configs(builder: _Builder, folder_rel: str, listing: _Listing) -> tuple[dict | None, dict | None]:
    prefix = f"{folder_rel}/" if folder_rel else ""
    found = []
    for base in ("config.json", "adapter_config.json"):
        if base in listing.files:
            builder.add_file(prefix + base, listing.files[base])
            found.append(read_json_object(os.path.join(builder.root, prefix + base), prefix + base, builder.integrity))
        else:
            found.append(None)
    return found[0], found[1]


# ---------------------------------------------------------------------------------------------
# single files


def _open_single_file(path: str, name: str) -> Checkpoint:
    root, base = os.path.split(path)
    if not base.endswith((INDEX_SUFFIX, SAFETENSORS_SUFFIX) + TORCH_SUFFIXES):
        raise InputError(
            f"{name}: unsupported file type (expected .safetensors, .safetensors.index.json, .bin, .pt, .pth or a directory)"
        )
    builder = _Builder(root=root, name=name)
    with bounded.open_regular(path, what="checkpoint file") as fh:  # type and permission, before any parsing
        size = os.fstat(fh.fileno()).st_size
    builder.add_file(base, size)
    beside = _Listing()  # the model's config beside a lone file
    config_path = os.path.join(root, "config.json")
    if os.path.lexists(config_path):
        try:
            beside.files["config.json"] = bounded.regular_file_size(config_path, what="config file")
        except InputError as exc:
            builder.integrity.append(IntegrityProblem("unreadable", "config.json", _reason(exc, config_path)))
    config, adapter_config = _read_configs(builder, "", beside)
    if base.endswith(INDEX_SUFFIX):
        builder.read_index(base)
    elif base.endswith(SAFETENSORS_SUFFIX):
        builder.read_safetensors(base)
    else:
        builder.read_torch(base)
    return builder.build(config=config, adapter_config=adapter_config)


# ---------------------------------------------------------------------------------------------
# directories

# weight files besides the model's own, read in every directory where they appear
_EXTRA_WEIGHTS = ("mm_projector.bin", "non_lora_trainables.bin")
# HF Trainer's own state files in checkpoint-N folders: not weights (and they need numpy globals)
_TRAINER_STATE = re.compile(r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")


def _weight_files(files: dict[str, int]) -> tuple[list[str], list[str]]:
    """(index files, weight files) transformers/LLaVA/PEFT would read from a folder, in that precedence."""
    safetensors_index = [f for f in files if f.endswith(SAFETENSORS_SUFFIX + INDEX_SUFFIX)]
    torch_index = [f for f in files if f.endswith(INDEX_SUFFIX) and not f.endswith(SAFETENSORS_SUFFIX + INDEX_SUFFIX)]
    safetensors = [f for f in files if f.endswith(SAFETENSORS_SUFFIX)]
    torch_files = [f for f in files if file_kind(f) == "torch" and not _TRAINER_STATE.match(f)]
    extras = [f for f in torch_files if f in _EXTRA_WEIGHTS]
    if safetensors_index:
        return safetensors_index, extras
    if safetensors:
        return [], safetensors + extras
    if torch_index:
        return torch_index, extras
    return [], torch_files


def _is_deepspeed_dir(directory: str, files: dict[str, int], dirs: list[str] | None = None) -> bool:
    return (
        "latest" in files
        or any(MODEL_STATES.match(f) for f in files)
        or any(GLOBAL_STEP.match(d) for d in (_list_dirs(directory) if dirs is None else dirs))
    )


def _open_directory(path: str, name: str) -> Checkpoint:
    listing = _listing(path)
    if _is_deepspeed_dir(path, listing.files, listing.dirs):
        from .deepspeed_format import open_deepspeed_dir

        return open_deepspeed_dir(path, name, listing)
    builder = _Builder(root=path, name=name)
    for base, size in listing.files.items():
        builder.add_file(base, size)
    builder.integrity.extend(_special_problems(listing))
    config, adapter_config = _read_configs(builder, "", listing)
    indexes, weights = _weight_files(listing.files)
    if not indexes and not weights:
        if not _has_entries(path):
            raise InputError(f"{name}: empty directory")
        refused = [f"{entry} is {what}" for entry, what in sorted(listing.special.items()) if _would_read(entry)]
        raise InputError(
            f"{name}: no weights found (expected *.safetensors, *.safetensors.index.json, *.bin, *.pt, *.pth or a DeepSpeed checkpoint)"
            + (f"; not opened: {', '.join(refused)}" if refused else "")
        )
    for index in indexes:
        builder.read_index(index)
    for weight in weights:
        builder.read_weights(weight)
    return builder.build(config=config, adapter_config=adapter_config)


def open_weights_in(builder: _Builder, folder_rel: str) -> bool:
    """Read the model weights of a sub-folder into `builder` (used for consolidated DeepSpeed outputs)."""
    folder = os.path.join(builder.root, folder_rel) if folder_rel else builder.root
    listing = _listing(folder)
    files = listing.files
    indexes, weights = _weight_files(files)
    prefix = f"{folder_rel}/" if folder_rel else ""
    builder.integrity.extend(_special_problems(listing, prefix))
    for base in indexes + weights:
        builder.add_file(prefix + base, files[base])
    for index in indexes:
        builder.read_index(prefix + index)
    for weight in weights:
        builder.read_weights(prefix + weight)
    return bool(indexes or weights)
