"""DeepSpeed checkpoint directories (ZeRO-1/2/3), read from the `*model_states.pt` files only.

Accepted paths: a run output dir with `latest` (content like ``global_step3``), one ``global_stepN``
dir (or any dir holding ``*model_states.pt``, e.g. XTuner's ``iter_N.pth/``), or an HF Trainer
``checkpoint-N`` dir holding ``global_stepN``. The optimizer files need DeepSpeed's own classes to
unpickle and are never opened; they are only listed.

The Checkpoint's tensors are the consolidated full weights when the directory holds them
(``save_16bit_model`` / ``zero_to_fp32`` output / Trainer's gathered save), otherwise the
``module`` entries of the model states (zero-size parameters under stage 3, which is expected:
the real shapes are in ``DeepSpeedInfo.param_shapes`` / ``frozen_param_shapes``).
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any, Mapping

from ..findings import InputError
from .checkpoint import Checkpoint, DeepSpeedInfo, IntegrityProblem
from .readers import (
    GLOBAL_STEP, MODEL_STATES, TRAINER_CHECKPOINT, _Builder, _Listing, _list_files, _listing, _special_problems,
    open_weights_in, read_json_object, read_limited,
)
from .torch_format import lazy_loader, load_checked, storage_problems, tensor_table

MAX_TAG_BYTES = 4096  # `latest` holds a tag such as "global_step3"


def _step_number(tag: str) -> int:
    match = re.search(r"(\d+)$", tag)
    return int(match.group(1)) if match else -1


def _find_tag(path: str, listing: _Listing, builder: _Builder) -> str | None:
    """The tag folder (relative to `path`; "" when `path` is the tag folder itself)."""
    if any(MODEL_STATES.match(f) for f in listing.files):
        return ""
    candidates = [d for d in listing.dirs if any(MODEL_STATES.match(f) for f in _list_files(os.path.join(path, d)))]
    if "latest" in listing.files:
        data = read_limited(os.path.join(path, "latest"), "latest", builder.integrity, limit=MAX_TAG_BYTES,
                            what="DeepSpeed latest file")
        tag = data.decode("utf-8", "replace").strip() if data is not None else ""
        if tag in candidates:
            return tag
        fallback = max(candidates, key=_step_number) if candidates else None
        builder.integrity.append(
            IntegrityProblem(
                "missing-shard", "latest",
                f"latest names tag {tag[:80]!r} but no such folder with *model_states.pt exists"
                + (f"; reading {fallback} instead" if fallback else ""),
            )
        )
        return fallback
    steps = [d for d in candidates if GLOBAL_STEP.match(d)] or candidates
    return max(steps, key=_step_number) if steps else None


def _shapes(value: Any) -> dict[str, tuple[int, ...]]:
    """`param_shapes` is a list of per-group {name: torch.Size}; `frozen_param_shapes` one mapping."""
    groups = value if isinstance(value, (list, tuple)) else [value]
    merged: dict[str, tuple[int, ...]] = {}
    for group in groups:
        if isinstance(group, Mapping):
            for name, shape in group.items():
                try:
                    merged[str(name)] = tuple(int(d) for d in shape)
                except (TypeError, ValueError):
                    continue
    return merged


def _stage(ds_config: Any, model_state_files: list[str]) -> int | None:
    if isinstance(ds_config, Mapping):
        zero = ds_config.get("zero_optimization")
        if isinstance(zero, Mapping) and isinstance(zero.get("stage"), int):
            return int(zero["stage"])
    if any(os.path.basename(f).startswith("zero_pp_rank_") for f in model_state_files):
        return 3
    return 2 if model_state_files else None


def open_deepspeed_dir(path: str, name: str, listing: _Listing) -> Checkpoint:
    builder = _Builder(root=path, name=name)
    files = listing.files
    for base, size in files.items():
        builder.add_file(base, size)
    builder.integrity.extend(_special_problems(listing))
    config = adapter_config = None
    if "config.json" in files:
        config = read_json_object(os.path.join(path, "config.json"), "config.json", builder.integrity)
    if "adapter_config.json" in files:
        adapter_config = read_json_object(os.path.join(path, "adapter_config.json"), "adapter_config.json", builder.integrity)

    tag = _find_tag(path, listing, builder)
    info = DeepSpeedInfo(
        stage=None, tag=tag or "", world_size=None, model_state_files=[], param_shapes={}, frozen_param_shapes={},
        buffer_names=[], ds_config=None, ds_version=None, consolidated=[],
        resumable=_in_trainer_checkpoint(path, tag, listing),
    )
    module_tensors: dict = {}
    if tag is not None:
        tag_dir = os.path.join(path, tag) if tag else path
        prefix = f"{tag}/" if tag else ""
        tag_listing = _listing(tag_dir)
        tag_files = tag_listing.files
        if tag:
            for base, size in tag_files.items():
                builder.add_file(prefix + base, size)
            builder.integrity.extend(_special_problems(tag_listing, prefix))
        info.tag = tag or os.path.basename(os.path.normpath(path))
        info.model_state_files = [prefix + f for f in sorted(tag_files, key=_rank_order) if MODEL_STATES.match(f)]
        module_tensors = _read_model_states(builder, info)
    consolidated = _read_consolidated(builder)
    info.consolidated = consolidated
    if not consolidated and module_tensors:
        builder.add_tensors(module_tensors)
    checkpoint = builder.build(config=config, adapter_config=adapter_config, fmt="deepspeed")
    checkpoint.deepspeed = info
    return checkpoint


def _in_trainer_checkpoint(path: str, tag: str | None, listing: _Listing) -> bool:
    """An HF Trainer checkpoint-N folder (or its global_stepN tag folder): resumable with its DeepSpeed state."""
    is_tag_folder = tag == ""  # then the Trainer's folder is one level up
    folder = os.path.dirname(os.path.normpath(path)) if is_tag_folder else path
    try:
        files = _list_files(folder) if is_tag_folder else listing.files
    except InputError:
        files = {}
    return bool(TRAINER_CHECKPOINT.match(os.path.basename(os.path.normpath(folder)))) or "trainer_state.json" in files


def _rank_order(name: str) -> tuple[int, str]:
    match = re.match(r"zero_pp_rank_(\d+)_", name)
    return (int(match.group(1)) if match else 0, name)


def _read_model_states(builder: _Builder, info: DeepSpeedInfo) -> dict:
    """Load rank 0's model states (after checking every rank's globals); fill `info`; return module tensors."""
    first = None
    for rel in info.model_state_files:
        contents = load_checked(os.path.join(builder.root, rel), file=rel, metadata_only=True)
        builder.integrity.extend(contents.problems)
        if contents.unsafe is not None:
            builder.unsafe.append(contents.unsafe)
        if first is None and not contents.failed:
            first = (rel, contents)
    if first is None:
        return {}
    rel, contents = first
    raw, is_zip = contents.raw, contents.is_zip
    if not isinstance(raw, Mapping):
        builder.integrity.append(IntegrityProblem("unreadable", rel, f"holds a {type(raw).__name__}, expected DeepSpeed's model-states dict"))
        return {}
    info.param_shapes = _shapes(raw.get("param_shapes"))
    info.frozen_param_shapes = _shapes(raw.get("frozen_param_shapes"))
    info.buffer_names = [str(b) for b in raw.get("buffer_names") or []]
    info.ds_config = raw.get("ds_config") if isinstance(raw.get("ds_config"), Mapping) else None
    info.ds_version = str(raw["ds_version"]) if raw.get("ds_version") is not None else None
    world = raw.get("dp_world_size")
    info.world_size = int(world) if isinstance(world, int) else None
    info.stage = _stage(info.ds_config, info.model_state_files)
    module = raw.get("module")
    if not isinstance(module, Mapping):
        return {}
    path = os.path.join(builder.root, rel)
    tensors, _ = tensor_table(module, file=rel, file_size=os.path.getsize(path))
    short = storage_problems(module, contents.records, file=rel) if is_zip else {}
    builder.integrity.extend(short.values())
    tensors = {k: replace(t, offset=None, nbytes=None) if k in short else t for k, t in tensors.items()}
    if is_zip:
        builder.loaders[rel] = lazy_loader(path, "module", {k: p.detail for k, p in short.items()})
    else:
        builder.loaders[rel] = lambda t: module[t.name]
    return tensors


def _read_consolidated(builder: _Builder) -> list[str]:
    """Full weights saved beside the DeepSpeed tag (top level, or a sub-folder such as save_16bit_model's)."""
    if not open_weights_in(builder, ""):
        for sub in _listing(builder.root).dirs:
            if GLOBAL_STEP.match(sub) or TRAINER_CHECKPOINT.match(sub) or any(
                MODEL_STATES.match(f) for f in _list_files(os.path.join(builder.root, sub))
            ):
                continue  # DeepSpeed tags and the Trainer's other checkpoints are not this folder's weights
            if open_weights_in(builder, sub):
                break
    found = {t.file for t in builder.tensors.values()}
    if "index" in builder.notes:
        found.add(builder.notes["index"]["file"])
    return sorted(found)
