"""Live parameters against references: a base checkpoint on disk, a base module, and the initializer of
their own class.

* ``compare_with_checkpoint``: one parameter at a time, the reference tensor is streamed from its
  file in bounded chunks (``scan.tensor_bit_chunks``), each chunk is moved to the parameter's device,
  cast to the parameter's dtype (what ``from_pretrained(torch_dtype=...)`` does) and compared there
  with the parameter's own elements; under ZeRO-3 each rank compares only the elements of its
  partition and the counts are combined across ranks. Pairs are found through the canonical keys of
  ``layout`` (``compare.pairing_keys``), so a live 5.x model pairs with a 4.x-style file.
* ``compare_with_module``: the same against another module's parameters (a base model in memory).
* ``initializer_reference``: the statistics a freshly built module of the same class and config has:
  the class is built on the meta device, only one layer's worth of modules is materialised on the
  CPU (layers share their initializer; ``layers.N`` maps to ``layers.0``) and the class's own
  ``_init_weights`` (or ``reset_parameters``) runs on them. Nothing of the live model is touched.
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Iterable

from .live import LiveModel, representative
from .live_stats import ValueStats, combine_across_ranks, group_rank, to_host, is_partitioned, local_data, value_statistics

_TORCH_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_INT_VIEWS = {2: "int16", 4: "int32", 8: "int64"}


@dataclass(frozen=True)
class Delta:
    differing: int  # elements that differ from the reference (all ranks together)
    max_abs_diff: float  # over the differing elements; NaN when only NaN positions differ


def _local_offset(param: Any) -> int:
    """Where this rank's elements start in the flattened parameter (its partition under ZeRO-3)."""
    if not is_partitioned(param):
        return 0
    rank, _ = group_rank(getattr(param, "ds_process_group", None))
    return rank * int(param.ds_tensor.numel())


# The same weights, saved or loaded in any of float32 / float16 / bfloat16 (a tower saved in fp16 and loaded
# as bf16 against an fp32 base file): one bf16 plus one fp16 unit in the last place, relative, and fp16's
# smallest subnormal, absolute. A re-initialised or never-loaded parameter differs by far more than that.
STORAGE_ROUNDING = (2.0 ** -7 + 2.0 ** -10, 2.0 ** -24)


def _difference(live_chunk: Any, reference_chunk: Any) -> tuple[Any, Any]:
    """(differing count, max |Δ| over them) as 0-d tensors on the live chunk's device.

    Elements differ when they are not the same number up to STORAGE_ROUNDING; NaN == NaN, ±inf only equal itself.
    """
    import torch

    a, b = live_chunk.float(), reference_chunk.float()
    relative, absolute = STORAGE_ROUNDING
    delta = (a - b).abs()
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    infinite = (torch.isinf(a) | torch.isinf(b)) & (a != b) & ~nan_a & ~nan_b
    differs = (delta > relative * torch.maximum(a.abs(), b.abs()) + absolute) | (nan_a ^ nan_b) | infinite
    zero = torch.zeros((), device=live_chunk.device)
    if not delta.numel():
        return zero, zero
    top = torch.where(differs, torch.nan_to_num(delta, nan=math.inf), zero).max()
    return differs.sum().float(), top


def compare_with_checkpoint(live: LiveModel, indices: Iterable[int], checkpoint: Any) -> tuple[dict[int, Delta], dict[int, str]]:
    """Per live parameter: its Delta to the checkpoint tensor of the same canonical key, or why it was not compared.

    Collective under ZeRO-3 with several ranks (every rank must call it with the same indices).
    """
    import numpy as np
    import torch

    from ..compare import _file_opener, pairing_keys
    from ..scan import BIT_FORMATS, DEFAULT_BUFFER_BYTES, tensor_bit_chunks

    names = pairing_keys(checkpoint)
    skipped: dict[int, str] = {}
    rows: dict[int, Any] = {}
    buffer = bytearray(DEFAULT_BUFFER_BYTES)
    with ExitStack() as stack:
        open_file = _file_opener(stack, checkpoint.root)
        for index in indices:
            param, handle = live.parameters[index], live.handles[index]
            key = live.canonical(index)
            info = checkpoint.tensors.get(names.get(key)) if key else None
            if info is None:
                skipped[index] = f"no counterpart in {checkpoint.name}"
                continue
            if tuple(info.shape) != param.shape:
                skipped[index] = f"shape {list(param.shape)} vs {list(info.shape)} in {checkpoint.name}"
                continue
            if info.dtype not in _TORCH_DTYPES:
                skipped[index] = f"reference dtype {info.dtype} is not compared"
                continue
            data, why = local_data(handle)
            if data is None:
                skipped[index] = why or "not readable"
                continue
            flat = data.reshape(-1)
            start = _local_offset(handle)
            stop = start + flat.numel()
            reference_dtype = getattr(torch, _TORCH_DTYPES[info.dtype])
            fmt = BIT_FORMATS[info.dtype]
            count = torch.zeros((), device=flat.device)
            top = torch.zeros((), device=flat.device)
            position = 0
            try:
                for bits in tensor_bit_chunks(checkpoint, info, fmt, buffer, open_file):
                    lo, hi = max(position, start), min(position + bits.size, stop)
                    if lo < hi:
                        ints = torch.from_numpy(np.ascontiguousarray(bits[lo - position:hi - position]).view(
                            getattr(np, _INT_VIEWS[bits.itemsize])))
                        reference = ints.view(reference_dtype).to(flat.device).to(flat.dtype)
                        differing, largest = _difference(flat[lo - start:hi - start], reference)
                        count += differing
                        top = torch.maximum(top, largest)
                    position += bits.size
            except Exception as exc:  # an unreadable reference is a reason, never a traceback
                skipped[index] = f"reference unreadable: {type(exc).__name__}: {exc}".splitlines()[0]
                continue
            rows[index] = torch.stack([count, top])
    return _finish(live, rows), skipped


def compare_with_module(live: LiveModel, indices: Iterable[int], reference: LiveModel) -> tuple[dict[int, Delta], dict[int, str]]:
    """Per live parameter: its Delta to the reference model's parameter of the same canonical key."""
    import torch

    by_key = {reference.canonical(i): i for i in range(len(reference.parameters))}
    skipped: dict[int, str] = {}
    rows: dict[int, Any] = {}
    for index in indices:
        other = by_key.get(live.canonical(index))
        if other is None:
            skipped[index] = f"no counterpart in {reference.name}"
            continue
        theirs = reference.handles[other]
        if reference.parameters[other].partitioned or theirs.is_meta:
            skipped[index] = "the reference parameter is partitioned or on meta"
            continue
        if reference.parameters[other].shape != live.parameters[index].shape:
            skipped[index] = f"shape {list(live.parameters[index].shape)} vs {list(reference.parameters[other].shape)}"
            continue
        data, why = local_data(live.handles[index])
        if data is None:
            skipped[index] = why or "not readable"
            continue
        flat = data.reshape(-1)
        start = _local_offset(live.handles[index])
        chunk = theirs.detach().reshape(-1)[start:start + flat.numel()].to(flat.device).to(flat.dtype)
        rows[index] = torch.stack(_difference(flat, chunk))
    return _finish(live, rows), skipped


def _finish(live: LiveModel, rows: dict[int, Any]) -> dict[int, Delta]:
    order = sorted(rows)
    host = to_host([rows[i] for i in order])
    combine_across_ranks(host, [live.parameters[i].partitioned for i in order], [live.handles[i] for i in order], columns=("sum", "max"))
    return {i: Delta(differing=int(row[0]), max_abs_diff=row[1] if math.isfinite(row[1]) else float("nan"))
            for i, row in zip(order, host)}


# ----------------------------------------------------------------------------- initializers


def initializer_reference(module: Any, names: Iterable[str]) -> dict[str, ValueStats] | str:
    """ValueStats of a fresh init of `module`'s class and config, per parameter name (relative to `module`),
    or why it could not be built. Each name is answered by its layer-0 representative."""
    import torch

    wanted = {name: representative(name) for name in names}
    config = getattr(module, "config", None)
    if config is None:
        return f"{type(module).__name__} has no config to rebuild it from"
    try:
        with torch.device("meta"):
            fresh = type(module)(config)
    except Exception as exc:
        return f"{type(module).__name__}(config) could not be built: {type(exc).__name__}"
    modules = dict(fresh.named_modules())
    targets = set(wanted.values())
    owners: set[str] = set()
    for module_name, owner in modules.items():
        for param_name, _ in owner.named_parameters(recurse=False):
            if (f"{module_name}.{param_name}" if module_name else param_name) in targets:
                owners.add(module_name)
    for module_name in owners:
        modules[module_name].to_empty(device="cpu", recurse=False)
    # children before parents, as Module.apply runs an init; ancestors' inits touch meta tensors harmlessly
    chain = [m for n, m in modules.items() if any(o == n or not n or o.startswith(n + ".") for o in owners)]
    init = getattr(fresh, "_init_weights", None)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for owner in reversed(chain):
            try:
                if callable(init):
                    init(owner)
                elif callable(getattr(owner, "reset_parameters", None)):
                    owner.reset_parameters()
            except Exception:  # an init that needs more than one layer: leave that module out
                continue
    params = dict(fresh.named_parameters())
    reps = sorted(targets & {n for n, p in params.items() if not p.is_meta})
    stats = dict(zip(reps, value_statistics([params[n] for n in reps])))
    return {name: stats[rep] for name, rep in wanted.items() if isinstance(stats.get(rep), ValueStats)}


def std_tolerance(count: int) -> float:
    """Relative tolerance on a sample std of `count` draws (~6 standard errors, plus 2 %)."""
    return 0.02 + 6.0 / math.sqrt(2.0 * max(count, 1))


def matches_reference(stats: ValueStats, reference: ValueStats) -> bool:
    """Whether a parameter's values have the statistics of the reference initializer's draw."""
    if not stats.finite or not stats.count:
        return False
    if reference.constant:
        return stats.constant and stats.min == reference.min
    if not reference.std:
        return False
    return (abs(stats.std / reference.std - 1.0) <= std_tolerance(stats.count)
            and abs(stats.mean - reference.mean) <= 6.0 * reference.std / math.sqrt(stats.count) + 1e-12)


