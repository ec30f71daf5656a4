"""`open_checkpoint`: the single entry point that turns a path into a :class:`Checkpoint`.

Reads headers, indexes, configs and (for pickled formats) the tensor table; never tensor data of
safetensors files, never a pickle whose globals are outside the allow-list, never writes. Input
that cannot be read at all raises :class:`InputError` (one line); defects inside a readable input
are recorded as IntegrityProblem / UnsafePickle entries for LD206 / LD207.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import layout as layouts
from ..findings import InputError
from .checkpoint import DTYPE_SIZES, Checkpoint, CheckpointFile, IntegrityProblem, TensorInfo, UnsafePickle
from .safetensors_format import parse_index, read_header, reconcile_index

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
INDEX_SUFFIX = ".index.json"
MAX_JSON_BYTES = 64 * 1024 * 1024  # config/index files larger than this are not read
MODEL_STATES = re.compile(r"^(?:zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt$")
OPTIM_STATES = re.compile(r"optim_states\.pt$")
GLOBAL_STEP = re.compile(r"^global_step\d+$")


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint file or directory (see layout.LAYOUTS) without loading tensor data."""
    name = os.fspath(path)
    mode = _stat_input(name)
    if stat.S_ISDIR(mode):
        return _open_directory(os.path.abspath(name), name)
    return _open_single_file(os.path.abspath(name), name)


# ---------------------------------------------------------------------------------------------
# path checks


def _stat_input(path: str) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"{path}: dangling symbolic link") from None
        raise InputError(f"{path}: no such file or directory") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: symbolic link loop") from None
        raise InputError(f"{path}: cannot stat ({exc.strerror or exc})") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InputError(f"{path}: not a regular file or directory ({_file_type(st.st_mode)})")
    return st.st_mode


def _file_type(mode: int) -> str:
    for test, label in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return label
    return "a special file"


def _regular_size(path: str) -> int | None:
    """Size of a regular file (following links), None for anything else or anything unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _list_files(directory: str) -> dict[str, int]:
    """Regular files directly inside `directory` -> size; special files and broken links are left out."""
    try:
        names = sorted(os.listdir(directory))
    except PermissionError:
        raise InputError(f"{directory}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{directory}: cannot list ({exc.strerror or exc})") from None
    files = {}
    for entry in names:
        size = _regular_size(os.path.join(directory, entry))
        if size is not None:
            files[entry] = size
    return files


def _has_entries(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _list_dirs(directory: str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(directory) if os.path.isdir(os.path.join(directory, e)))
    except OSError:
        return []


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
        except OSError as exc:
            self.integrity.append(IntegrityProblem("unreadable", rel, f"cannot read: {exc.strerror or exc}"))
            return None
        self.integrity.extend(header.problems)
        self.add_tensors(header.tensors)
        if header.metadata:
            self.notes.setdefault("safetensors_metadata", {})[rel] = header.metadata
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
        return None if contents.unsafe is not None or contents.failed else tuple(contents.tensors)

    def read_weights(self, rel: str) -> tuple[str, ...] | None:
        return self.read_safetensors(rel) if rel.endswith(SAFETENSORS_SUFFIX) else self.read_torch(rel)

    def read_index(self, rel: str) -> None:
        """A sharded checkpoint: the index, every shard it names, and unnamed sibling shards."""
        path = os.path.join(self.root, rel)
        folder = os.path.dirname(rel)
        prefix = f"{folder}/" if folder else ""
        text = _read_small(path, rel, self.integrity)
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
            size = _regular_size(os.path.join(self.root, shard_rel))
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


def _read_small(path: str, rel: str, integrity: list[IntegrityProblem]) -> bytes | None:
    size = _regular_size(path)
    if size is None:
        integrity.append(IntegrityProblem("unreadable", rel, "not a regular file"))
        return None
    if size > MAX_JSON_BYTES:
        integrity.append(IntegrityProblem("unreadable", rel, f"{size} bytes, larger than the {MAX_JSON_BYTES}-byte limit for JSON files"))
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        integrity.append(IntegrityProblem("unreadable", rel, f"cannot read: {exc.strerror or exc}"))
        return None


def read_json_object(path: str, rel: str, integrity: list[IntegrityProblem]) -> dict | None:
    """A JSON object file (config.json, adapter_config.json); defects become 'bad-config' problems."""
    data = _read_small(path, rel, integrity)
    if data is None:
        return None
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        integrity.append(IntegrityProblem("bad-config", rel, f"not valid UTF-8 JSON ({' '.join(str(exc).split())[:160]})"))
        return None
    if not isinstance(parsed, dict):
        integrity.append(IntegrityProblem("bad-config", rel, f"a JSON {type(parsed).__name__}, expected an object"))
        return None
    return parsed


def _read_configs(builder: _Builder, folder_rel: str, files: dict[str, int]) -> tuple[dict | None, dict | None]:
    prefix = f"{folder_rel}/" if folder_rel else ""
    found = []
    for base in ("config.json", "adapter_config.json"):
        if base in files:
            builder.add_file(prefix + base, files[base])
            found.append(read_json_object(os.path.join(builder.root, prefix + base), prefix + base, builder.integrity))
        else:
            found.append(None)
    return found[0], found[1]


# ---------------------------------------------------------------------------------------------
# single files


def _open_single_file(path: str, name: str) -> Checkpoint:
    root, base = os.path.split(path)
    builder = _Builder(root=root, name=name)
    size = _regular_size(path) or 0
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot open ({exc.strerror or exc})") from None
    builder.add_file(base, size)
    config_size = _regular_size(os.path.join(root, "config.json"))  # the model's config beside a lone file
    config, adapter_config = _read_configs(builder, "", {} if config_size is None else {"config.json": config_size})
    if base.endswith(INDEX_SUFFIX):
        builder.read_index(base)
    elif base.endswith(SAFETENSORS_SUFFIX):
        builder.read_safetensors(base)
    elif base.endswith(TORCH_SUFFIXES):
        builder.read_torch(base)
    else:
        raise InputError(
            f"{name}: unsupported file type (expected .safetensors, .safetensors.index.json, .bin, .pt, .pth or a directory)"
        )
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


def _is_deepspeed_dir(directory: str, files: dict[str, int]) -> bool:
    return (
        "latest" in files
        or any(MODEL_STATES.match(f) for f in files)
        or any(GLOBAL_STEP.match(d) for d in _list_dirs(directory))
    )


def _open_directory(path: str, name: str) -> Checkpoint:
    files = _list_files(path)
    if _is_deepspeed_dir(path, files):
        from .deepspeed_format import open_deepspeed_dir

        return open_deepspeed_dir(path, name, files)
    builder = _Builder(root=path, name=name)
    for base, size in files.items():
        builder.add_file(base, size)
    config, adapter_config = _read_configs(builder, "", files)
    indexes, weights = _weight_files(files)
    if not indexes and not weights:
        if not _has_entries(path):
            raise InputError(f"{name}: empty directory")
        raise InputError(
            f"{name}: no weights found (expected *.safetensors, *.safetensors.index.json, *.bin, *.pt, *.pth or a DeepSpeed checkpoint)"
        )
    for index in indexes:
        builder.read_index(index)
    for weight in weights:
        builder.read_weights(weight)
    return builder.build(config=config, adapter_config=adapter_config)


def open_weights_in(builder: _Builder, folder_rel: str) -> bool:
    """Read the model weights of a sub-folder into `builder` (used for consolidated DeepSpeed outputs)."""
    folder = os.path.join(builder.root, folder_rel) if folder_rel else builder.root
    files = _list_files(folder)
    indexes, weights = _weight_files(files)
    prefix = f"{folder_rel}/" if folder_rel else ""
    for base in indexes + weights:
        builder.add_file(prefix + base, files[base])
    for index in indexes:
        builder.read_index(prefix + index)
    for weight in weights:
        builder.read_weights(prefix + weight)
    return bool(indexes or weights)
