"""Value statistics of live parameters, computed where the parameters are, in one batched pass.

Every reduction runs on the tensor's own device and only scalars come back: each tensor gives a
row of 0-d results (count, sum, sum of squares, min, max), the rows of one device are stacked and
copied to the host once, so a model costs one synchronisation per device, not one per tensor.
NaN and Inf propagate through min/max, so a clean tensor needs no second pass; only tensors
flagged non-finite are counted exactly (and their finite part summarised) in a second pass.

ZeRO-3: a partitioned parameter (``ds_tensor``, ``ds_numel``) is never gathered. Each rank
reduces the slice of its own partition that holds real elements (the last partition is padded)
and the rows of all partitioned parameters are combined across ranks with one ``all_reduce`` for
the sums and one for the maxima, whatever the number of parameters. That makes these functions
collective under ZeRO-3 with several ranks: every rank must call them, in the same order (as it
must call any collective). Non-partitioned parameters are whole on every rank and not reduced.

Nothing here writes to a parameter, changes ``requires_grad`` or moves a tensor; temporaries are
per tensor and freed. torch is imported lazily; DeepSpeed is never imported (its objects are
recognised by their attributes), except to read a ZeRO-3 gradient partition through
``deepspeed.utils.safe_get_local_grad`` when a DeepSpeed optimizer already holds it.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

_CHUNK = 1 << 24  # elements per float64 temporary in the moment pass


@dataclass(frozen=True)
class ValueStats:
    """Statistics of one tensor's values (of all ranks' partitions together under ZeRO-3)."""

    count: int
    nan: int = 0
    inf: int = 0
    mean: float = 0.0  # over the finite elements
    std: float = 0.0  # population std over the finite elements
    min: float | None = None  # finite elements only; None when there are none
    max: float | None = None

    @property
    def finite(self) -> bool:
        return not self.nan and not self.inf

    @property
    def all_zero(self) -> bool:
        return self.finite and self.count > 0 and self.min == 0.0 and self.max == 0.0

    @property
    def constant(self) -> bool:
        return self.finite and self.count > 0 and self.min == self.max

    @property
    def max_abs(self) -> float:
        return max(abs(self.min or 0.0), abs(self.max or 0.0))


@dataclass(frozen=True)
class Moments:
    """Standardised moments of a finite tensor, for telling an initializer's distribution from trained weights."""

    count: int
    mean: float
    std: float
    kurtosis: float  # E[(x-mean)^4] / std^4: 1.8 for a uniform, 3 for a normal
    max_abs: float

    @classmethod
    def from_sums(cls, n: float, s1: float, s2: float, s3: float, s4: float, max_abs: float) -> "Moments":
        """From the raw power sums of `n` values (central moments expanded around the mean)."""
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        m4 = s4 / n - 4 * mean * s3 / n + 6 * mean * mean * s2 / n - 3 * mean ** 4
        return cls(count=int(n), mean=mean, std=math.sqrt(var), kurtosis=m4 / (var * var) if var > 0 else float("nan"),
                   max_abs=max_abs)


# ----------------------------------------------------------------------------- local data


def _torch():
    import torch

    return torch


def is_partitioned(param: Any) -> bool:
    """A ZeRO-3 partitioned parameter (DeepSpeed's attributes; DeepSpeed itself is not imported)."""
    return hasattr(param, "ds_tensor") and hasattr(param, "ds_numel")


def true_shape(param: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in (param.ds_shape if is_partitioned(param) else param.shape))


def true_numel(param: Any) -> int:
    return int(param.ds_numel) if is_partitioned(param) else int(param.numel())


def group_rank(group: Any) -> tuple[int, int]:
    torch = _torch()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 1
    return torch.distributed.get_rank(group=group), torch.distributed.get_world_size(group=group)


def _partition_slice(flat: Any, param: Any) -> Any:
    """The elements of a flat partition (data or gradient) that belong to the parameter on this rank."""
    size = int(flat.numel())
    rank, _ = group_rank(getattr(param, "ds_process_group", None))
    valid = max(0, min(size, int(param.ds_numel) - rank * size))
    return flat.reshape(-1).narrow(0, 0, valid)


def local_data(param: Any) -> tuple[Any, str | None]:
    """(the values this rank holds, None) or (None, why they are not read)."""
    if is_partitioned(param):
        partition = getattr(param, "ds_tensor", None)
        status = str(getattr(partition, "status", "")) if partition is not None else ""
        if partition is None or status.endswith("NOT_AVAILABLE") or partition.is_meta:
            return None, "its ZeRO-3 partition is not resident (offloaded to NVMe)"
        data = partition.detach()
        return (_partition_slice(data, param), None) if _scannable(data) else (None, f"dtype {_dtype_name(data)} holds no NaN/Inf")
    if param.is_meta:
        return None, "on the meta device"
    data = param.detach()
    return (data, None) if _scannable(data) else (None, f"dtype {_dtype_name(data)} holds no NaN/Inf")


def local_gradient(param: Any) -> tuple[Any, str | None]:
    """(this rank's gradient of the parameter, None) or (None, why there is none to read)."""
    grad = getattr(param, "grad", None)
    if grad is not None:
        return grad.detach(), None
    if is_partitioned(param) and hasattr(param, "_z3_optimizer") and "deepspeed" in sys.modules:
        if not param.requires_grad:
            return None, "frozen"
        try:
            from deepspeed.utils import safe_get_local_grad

            partition = safe_get_local_grad(param)
        except Exception as exc:  # the engine's bookkeeping may not hold gradients at this point
            return None, f"DeepSpeed holds no gradient partition ({type(exc).__name__})"
        return (None, "no gradient yet") if partition is None else (_partition_slice(partition.detach(), param), None)
    if hasattr(param, "_hp_mapping"):
        return None, "ZeRO-1/2 keeps gradients in its reduction buckets"
    return None, "no gradient yet"


def _dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _scannable(tensor: Any) -> bool:
    return tensor.is_floating_point()


# ----------------------------------------------------------------------------- statistics


def value_statistics(params: Sequence[Any], *, gradients: bool = False) -> list[ValueStats | str]:
    """Per parameter: ValueStats of its values (or of its gradient), or a one-line reason it was not read.

    Collective under ZeRO-3 with several ranks (see the module docstring).
    """
    views: list[Any] = []
    skipped: dict[int, str] = {}
    for index, param in enumerate(params):
        data, why = local_gradient(param) if gradients else local_data(param)
        if data is None:
            skipped[index] = why or "not readable"
        views.append(data)
    partitioned = [is_partitioned(p) and views[i] is not None for i, p in enumerate(params)]
    rows = _first_pass(views)
    combine_across_ranks(rows, partitioned, params, columns=("sum", "sum", "sum", "min", "max"))
    flagged = [i for i, row in enumerate(rows) if row is not None and _non_finite(row)]
    _refine(rows, views, partitioned, params, skip=set(flagged))
    exact = dict(zip(flagged, _second_pass([views[i] for i in flagged]))) if flagged else {}
    if flagged:
        exact_rows = [exact[i] for i in flagged]
        combine_across_ranks(exact_rows, [partitioned[i] for i in flagged], [params[i] for i in flagged],
                 columns=("sum", "sum", "sum", "sum", "sum", "min", "max"))
        exact = dict(zip(flagged, exact_rows))
    out: list[ValueStats | str] = []
    for index, row in enumerate(rows):
        if index in skipped:
            out.append(skipped[index])
        elif index in exact:
            out.append(_stats_from_exact(exact[index]))
        else:
            out.append(_stats_from_row(row))
    return out


def moment_statistics(params: Sequence[Any]) -> list[Moments | str]:
    """Per parameter: Moments (float64 accumulation, chunked), or why not. Collective like value_statistics."""
    views: list[Any] = []
    skipped: dict[int, str] = {}
    for index, param in enumerate(params):
        data, why = local_data(param)
        if data is None:
            skipped[index] = why or "not readable"
        views.append(data)
    torch = _torch()
    rows: list[Any] = []
    for data in views:
        if data is None:
            rows.append(None)
            continue
        flat = data.reshape(-1)
        sums = torch.zeros(5, dtype=torch.float64, device=flat.device)
        top = torch.zeros((), dtype=torch.float64, device=flat.device)
        sums[0] = flat.numel()
        for start in range(0, flat.numel(), _CHUNK):
            x = flat[start:start + _CHUNK].double()
            sq = x * x
            sums[1:] += torch.stack([x.sum(), sq.sum(), (sq * x).sum(), (sq * sq).sum()])
            top = torch.maximum(top, x.abs().max())
        rows.append(torch.cat([sums, top.reshape(1)]))
    rows = to_host(rows)
    partitioned = [is_partitioned(p) and views[i] is not None for i, p in enumerate(params)]
    combine_across_ranks(rows, partitioned, params, columns=("sum",) * 5 + ("max",))
    out: list[Moments | str] = []
    for index, row in enumerate(rows):
        if index in skipped:
            out.append(skipped[index])
            continue
        if not row[0] or not all(math.isfinite(v) for v in row):
            out.append("not finite")
            continue
        out.append(Moments.from_sums(*row))
    return out


def _first_pass(views: Sequence[Any]) -> list[list[float] | None]:
    """Rows [count, sum, sum of squares, min, max] per view (None where there is no view)."""
    torch = _torch()
    rows: list[Any] = []
    for data in views:
        if data is None:
            rows.append(None)
        elif data.numel() == 0:
            rows.append(torch.tensor([0.0, 0.0, 0.0, math.inf, -math.inf], device=data.device))
        else:
            x = data if data.dtype in _native_dtypes() else data.float()  # float8: one temporary
            low, high = torch.aminmax(x)
            rows.append(torch.stack([
                torch.tensor(float(x.numel()), device=x.device),
                x.sum(dtype=torch.float32),
                torch.linalg.vector_norm(x, 2, dtype=torch.float32).square(),
                low.float(), high.float(),
            ]))
    return to_host(rows)


def _ill_conditioned(row: Sequence[float]) -> bool:
    """fp32 sums lose the spread of a tensor whose mean dwarfs it (LayerNorm weights near 1): var ~ mean^2 * 1e-7."""
    count, total, squares, low, high = row
    if not count or low == high:
        return False
    mean = total / count
    return mean * mean > 1e3 * max(squares / count - mean * mean, 0.0)


def _refine(rows: list, views: Sequence[Any], partitioned: Sequence[bool], params: Sequence[Any], *, skip: set[int]) -> None:
    """Recompute sum and sum of squares in float64 for the (few, small) ill-conditioned tensors, in place."""
    torch = _torch()
    chosen = [i for i, row in enumerate(rows) if row is not None and i not in skip and _ill_conditioned(row)]
    if not chosen:
        return
    sums = []
    for index in chosen:
        flat = views[index].reshape(-1)
        acc = torch.zeros(3, dtype=torch.float64, device=flat.device)
        acc[0] = flat.numel()
        for start in range(0, flat.numel(), _CHUNK):
            x = flat[start:start + _CHUNK].double()
            acc[1:] += torch.stack([x.sum(), x.square().sum()])
        sums.append(acc)
    host = to_host(sums)
    combine_across_ranks(host, [partitioned[i] for i in chosen], [params[i] for i in chosen], columns=("sum", "sum", "sum"))
    for index, (_, total, squares) in zip(chosen, host):
        rows[index][1:3] = [total, squares]


def _second_pass(views: Sequence[Any]) -> list[list[float]]:
    """Rows [count, NaN, Inf, finite sum, finite sum of squares, finite min, finite max] (one tensor's temporaries at a time)."""
    torch = _torch()
    rows = []
    for data in views:
        x = data.float()
        finite = torch.isfinite(x)
        kept = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        any_finite = finite.any()
        low = torch.where(finite, x, torch.full((), math.inf, device=x.device)).min()
        high = torch.where(finite, x, torch.full((), -math.inf, device=x.device)).max()
        rows.append(torch.stack([
            torch.tensor(float(x.numel()), device=x.device),
            torch.isnan(x).sum().float(), torch.isinf(x).sum().float(),
            kept.double().sum().float(), kept.double().square().sum().float(),
            torch.where(any_finite, low, torch.full((), math.inf, device=x.device)),
            torch.where(any_finite, high, torch.full((), -math.inf, device=x.device)),
        ]))
        del x, finite, kept
    return to_host(rows)


def to_host(rows: Sequence[Any]) -> list[list[float] | None]:
    """One device-to-host copy per device: the only synchronisation of a pass."""
    torch = _torch()
    by_device: dict[Any, list[int]] = {}
    for index, row in enumerate(rows):
        if row is not None:
            by_device.setdefault(row.device, []).append(index)
    out: list[list[float] | None] = [None] * len(rows)
    for indices in by_device.values():
        values = torch.stack([rows[i].to(torch.float64) for i in indices]).cpu().tolist()
        for index, value in zip(indices, values):
            out[index] = value
    return out


def _non_finite(row: Sequence[float]) -> bool:
    return not (math.isfinite(row[3]) or row[0] == 0) or not (math.isfinite(row[4]) or row[0] == 0)


def combine_across_ranks(rows: list, partitioned: Sequence[bool], params: Sequence[Any], *, columns: Sequence[str]) -> None:
    """Reduce the rows of partitioned parameters across their ranks, in place (two all_reduces per group)."""
    torch = _torch()
    if not any(partitioned) or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    groups: dict[int, tuple[Any, list[int]]] = {}
    for index, flag in enumerate(partitioned):
        if flag:
            group = getattr(params[index], "ds_process_group", None)
            groups.setdefault(id(group), (group, []))[1].append(index)
    for group, indices in groups.values():
        if torch.distributed.get_world_size(group=group) == 1:
            continue
        device = _comm_device(group)
        matrix = torch.tensor([rows[i] for i in indices], dtype=torch.float64, device=device)
        sums = [c for c, kind in enumerate(columns) if kind == "sum"]
        highs = [c for c, kind in enumerate(columns) if kind in ("min", "max")]
        signs = torch.tensor([-1.0 if columns[c] == "min" else 1.0 for c in highs], dtype=torch.float64, device=device)
        summed = matrix[:, sums].contiguous()
        # NaN would poison a MAX reduction: NaN flags travel in the sums (second pass), values here
        top = torch.nan_to_num(matrix[:, highs] * signs, nan=-math.inf).contiguous()
        torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM, group=group)
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=group)
        matrix[:, sums] = summed
        matrix[:, highs] = top * signs
        for index, value in zip(indices, matrix.cpu().tolist()):
            rows[index] = value


def _comm_device(group: Any) -> Any:
    torch = _torch()
    backend = str(torch.distributed.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _stats_from_row(row: Sequence[float]) -> ValueStats:
    count, total, squares, low, high = row
    if not count:
        return ValueStats(count=0)
    if low == high:  # constant: exact, whatever the rounding of the sums
        return ValueStats(count=int(count), mean=low, std=0.0, min=low, max=high)
    mean = total / count
    return ValueStats(count=int(count), mean=mean, std=math.sqrt(max(squares / count - mean * mean, 0.0)),
                      min=low, max=high)


def _stats_from_exact(row: Sequence[float]) -> ValueStats:
    count, nan, inf, total, squares, low, high = row
    finite = count - nan - inf
    mean = total / finite if finite else 0.0
    std = math.sqrt(max(squares / finite - mean * mean, 0.0)) if finite else 0.0
    return ValueStats(count=int(count), nan=int(nan), inf=int(inf), mean=mean, std=std,
                      min=low if finite else None, max=high if finite else None)


def _native_dtypes() -> tuple:
    torch = _torch()
    return (torch.float16, torch.bfloat16, torch.float32, torch.float64)
