"""Trained checkpoint vs. its base, tensor by tensor: which tensors changed and by how much (--deep).

Tensors are paired by canonical key (``layout.canonical_key``), so base and trained may use
different key layouts (an hf-llava base and an original-LLaVA fine-tune; transformers 5's plain
``language_model.model.*`` and the ``language_model.model.model.*`` it writes under ZeRO-3). PEFT
wrappers are seen through: ``base_model.model.`` prefixes and ``.base_layer.`` are dropped before
pairing, and LoRA adapters themselves have no counterpart in a base.

Pairs of the same dtype are compared on their raw bits, chunk by chunk, with one reused buffer
per side (the readers of ``llava_doctor.scan``); the absolute difference is computed only on
chunks whose bits differ. Pairs whose float dtypes differ (an fp16 base, a bf16 or fp32 fine-tune:
the common case) are compared as values with a tolerance that fits the narrower format: a copy of
the same number into either format, rounded to nearest or truncated, is "unchanged" (|a - b| <=
(e_a + e_b) * max(|a|, |b|) + the larger smallest subnormal, with e = 2^-mantissa bits, one unit in
the last place), so a change smaller than one step of the narrower format cannot be seen. Pairs whose shapes differ,
or whose dtype cannot be decoded (fp8 against another format), are not compared and listed in
``Comparison.skipped``; every component's coverage is in ``Comparison.coverage()``. The result is
computed once per (trained, base) pair and kept in ``trained.notes['compare']``.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from . import findings
from .artifacts.checkpoint import Checkpoint, TensorInfo
from .layout import canonical_key, detect_layout, strip_peft_prefix, vision_tower_unfrozen
from .stages import expected_trainable
from .progress import progress_bar
from .scan import BIT_FORMATS, DEFAULT_BUFFER_BYTES, BitFormat, hole_bytes, tensor_bit_chunks

COMPARE_NOTE = "compare"
_COMPUTE_SLICE_BYTES = 1 << 20  # decoded temporaries stay in cache: measured ~2.5x faster for bf16 than whole 4 MiB chunks
PEFT_LAYOUTS = ("peft-adapter", "llava-original-lora")
# mantissa bits (without the implicit one) and the smallest subnormal of the formats numpy can decode
_PRECISION = {"F16": (10, 2.0 ** -24), "BF16": (7, 2.0 ** -133), "F32": (23, 2.0 ** -149), "F64": (52, 5e-324)}


@dataclass(frozen=True)
class Tolerance:
    """When two values of different formats are the same number: |a - b| <= relative * max(|a|, |b|) + absolute."""

    relative: float
    absolute: float

    def describe(self) -> str:
        return f"|Δ| <= {self.relative:.3g}·|x| + {self.absolute:.3g}"


def tolerance(dtype: str, base_dtype: str) -> Tolerance | None:
    """None when the dtypes are equal (bits must match); the rounding tolerance of the pair otherwise."""
    if dtype == base_dtype:
        return None
    (bits_a, sub_a), (bits_b, sub_b) = _PRECISION[dtype], _PRECISION[base_dtype]
    return Tolerance(2.0 ** -bits_a + 2.0 ** -bits_b, max(sub_a, sub_b))


@dataclass(frozen=True)
class TensorDiff:
    name: str  # key in the trained checkpoint
    base_name: str  # key of its counterpart in the base
    component: str
    changed: bool  # some element's bits differ (beyond `tolerance` when the dtypes differ)
    differing: int = 0  # elements that differ
    max_abs_diff: float | None = None  # over those elements; None when unchanged or the dtype cannot be decoded (fp8)
    tolerance: Tolerance | None = None  # None: compared bit for bit


@dataclass(frozen=True)
class Coverage:
    """What a comparison covered in one component of the trained checkpoint."""

    component: str
    tensors: int  # tensors of the component that have a canonical key (LoRA adapters excluded)
    compared: int
    changed: int
    in_base: bool  # the base has this component at all
    no_counterpart: int = 0
    not_comparable: int = 0  # a counterpart exists but shape / dtype rule it out
    unreadable: int = 0
    example_reason: str = ""  # why the first not-comparable or unreadable tensor was not compared
    tolerances: tuple[str, ...] = ()  # the rounding tolerances used (dtype pairs that differ)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tensors": self.tensors, "compared": self.compared, "changed": self.changed,
                               "in_base": self.in_base}
        for name in ("no_counterpart", "not_comparable", "unreadable"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.example_reason:
            out["example_reason"] = self.example_reason
        if self.tolerances:
            out["tolerances"] = list(self.tolerances)
        return out


@dataclass
class Comparison:
    tensors: dict[str, TensorDiff] = field(default_factory=dict)  # by trained key
    skipped: dict[str, str] = field(default_factory=dict)  # trained key -> why the pair was not compared
    errors: dict[str, str] = field(default_factory=dict)  # trained key -> why its data could not be read
    unpaired: dict[str, str] = field(default_factory=dict)  # trained key -> component, for keys the base lacks
    components: dict[str, str] = field(default_factory=dict)  # trained key -> component, every paired-or-not key
    base_components: frozenset[str] = frozenset()  # components the base holds
    bytes_read: int = 0
    seconds: float = 0.0

    def by_component(self) -> dict[str, list[TensorDiff]]:
        groups: dict[str, list[TensorDiff]] = {}
        for diff in sorted(self.tensors.values(), key=lambda d: d.name):
            groups.setdefault(diff.component, []).append(diff)
        return groups

    def coverage(self) -> dict[str, Coverage]:
        """Component -> what was compared, for every component of the trained checkpoint that has canonical keys."""
        out: dict[str, Coverage] = {}
        diffs = self.by_component()
        for component in sorted(set(self.components.values())):
            keys = sorted(k for k, c in self.components.items() if c == component)
            compared = diffs.get(component, [])
            reasons = [self.skipped[k] for k in keys if k in self.skipped] + [self.errors[k] for k in keys if k in self.errors]
            out[component] = Coverage(
                component=component,
                tensors=len(keys),
                compared=len(compared),
                changed=sum(d.changed for d in compared),
                in_base=component in self.base_components,
                no_counterpart=sum(k in self.unpaired for k in keys),
                not_comparable=sum(k in self.skipped for k in keys),
                unreadable=sum(k in self.errors for k in keys),
                example_reason=reasons[0] if reasons else "",
                tolerances=tuple(sorted({d.tolerance.describe() for d in compared if d.tolerance is not None})),
            )
        return out

    def coverage_table(self) -> dict[str, dict[str, Any]]:
        return {component: cov.as_dict() for component, cov in self.coverage().items()}


def pairing_keys(checkpoint: Checkpoint) -> dict[str, str]:
    """Canonical key -> tensor name, for every tensor that has one (LoRA adapters have none)."""
    layout = checkpoint.layout
    strip = layout in PEFT_LAYOUTS
    if strip:
        layout = detect_layout([strip_peft_prefix(k) for k in checkpoint.tensors], checkpoint.config)
    keys: dict[str, str] = {}
    for name in checkpoint.tensors:
        key = name.replace(".base_layer.", ".")
        canonical = canonical_key(strip_peft_prefix(key) if strip else key, layout)
        if canonical is not None:
            keys.setdefault(canonical, name)
    return keys


_F16_TABLE: list[np.ndarray] = []


def _f16_table() -> np.ndarray:
    """float32 value of every float16 bit pattern."""
    if not _F16_TABLE:
        _F16_TABLE.append(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32))
    return _F16_TABLE[0]


def decode(bits: np.ndarray, fmt: BitFormat) -> np.ndarray | None:
    """Float values of raw bits (bf16 via the top half of a float32); None for formats numpy lacks (fp8)."""
    if fmt.uint is np.uint16:
        if fmt.expmask == 0x7F80:
            if sys.byteorder == "little":  # the bits are the top half of each float32: one strided copy (~10x astype+shift)
                out = np.zeros(bits.size, dtype=np.uint32)
                out.view(np.uint16)[1::2] = bits
                return out.view(np.float32)
            return (bits.astype(np.uint32) << 16).view(np.float32)
        return np.take(_f16_table(), bits)  # a 256 KB lookup: ~2.4x numpy's float16 -> float32 cast
    if fmt.uint is np.uint32:
        return bits.view(np.float32)
    if fmt.uint is np.uint64:
        return bits.view(np.float64)
    return None


class _Difference:
    """Folds aligned chunk pairs of one tensor into (differing elements, max |Δ|).

    Same format: elements differ when their bits do. Different formats (`tolerance` given): when
    their values differ by more than a rounding into the narrower format explains.
    """

    def __init__(self, fmt: BitFormat, base_fmt: BitFormat | None = None, tolerance: Tolerance | None = None) -> None:
        self.fmt = fmt
        self.base_fmt = base_fmt or fmt
        self.tolerance = tolerance
        self.differing = 0
        self.max_abs: float | None = None

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.tolerance is not None:
            self._add_mixed(a, b)
            return
        mask = a != b
        count = int(np.count_nonzero(mask))
        if not count:
            return
        self.differing += count
        top = self._max_abs(a, b)
        if top is not None and not top > 0 and count < a.size:
            # on the whole chunk, equal elements give 0 (or NaN for equal NaNs) and may hide the
            # differing ones' NaN / ±0 result: recompute on the differing elements alone (rare)
            top = self._max_abs(a[mask], b[mask])
        self._fold(top)

    def _fold(self, top: float | None) -> None:
        if top is None:
            return
        if self.max_abs is None or self.max_abs != self.max_abs:
            self.max_abs = top
        elif top == top:
            self.max_abs = max(self.max_abs, top)

    def _add_mixed(self, a: np.ndarray, b: np.ndarray) -> None:
        rel, floor = self.tolerance.relative, self.tolerance.absolute
        step = _COMPUTE_SLICE_BYTES // max(a.itemsize, b.itemsize)
        for start in range(0, a.size, step):
            va, vb = decode(a[start:start + step], self.fmt), decode(b[start:start + step], self.base_fmt)
            if va.dtype != vb.dtype:
                va, vb = va.astype(np.float64), vb.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.subtract(va, vb)
                np.abs(diff, out=diff)
                limit = np.maximum(np.abs(va), np.abs(vb))
                limit *= rel
                limit += floor
                changed = diff > limit  # a NaN difference compares False: settled below, only where one occurs
                if not np.isfinite(diff.max(initial=0.0)):
                    nan_a, nan_b = np.isnan(va), np.isnan(vb)
                    changed |= (nan_a != nan_b) | ((va != vb) & (np.isinf(va) | np.isinf(vb)) & ~nan_a & ~nan_b)
            count = int(np.count_nonzero(changed))
            if count:
                self.differing += count
                with np.errstate(invalid="ignore", over="ignore"):
                    top = float(np.fmax.reduce(diff, where=changed, initial=-np.inf))
                self._fold(top if top != -np.inf else float("nan"))

    def _max_abs(self, a: np.ndarray, b: np.ndarray) -> float | None:
        """max |a - b| over decoded values, ignoring NaN results; NaN when every result is NaN."""
        if decode(a[:0], self.fmt) is None:
            return None
        step = _COMPUTE_SLICE_BYTES // a.itemsize
        tops = []
        for start in range(0, a.size, step):
            va, vb = decode(a[start:start + step], self.fmt), decode(b[start:start + step], self.fmt)
            with np.errstate(invalid="ignore", over="ignore"):
                tops.append(float(np.fmax.reduce(np.abs(va - vb))))
        numbers = [t for t in tops if t == t]
        return max(numbers) if numbers else float("nan")


def _aligned(left: Iterator[np.ndarray], right: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Equal-length slices of two chunk streams of the same element count (their chunk sizes may differ)."""
    a = b = np.empty(0, dtype=np.uint8)
    while True:
        if not a.size:
            a = next(left, None)
        if not b.size:
            b = next(right, None)
        if a is None or b is None:
            if a is not None or b is not None:
                raise EOFError("the two tensors hold different amounts of data")
            return
        n = min(a.size, b.size)
        yield a[:n], b[:n]
        a, b = a[n:], b[n:]


def _why_not_comparable(trained: TensorInfo, base: TensorInfo) -> str | None:
    if trained.shape != base.shape:
        return f"shape {list(trained.shape)} vs base {list(base.shape)}"
    if trained.dtype not in BIT_FORMATS or base.dtype not in BIT_FORMATS:
        return f"dtype {trained.dtype} vs base {base.dtype}: not both float formats"
    if trained.dtype != base.dtype and not (trained.dtype in _PRECISION and base.dtype in _PRECISION):
        return f"dtype {trained.dtype} vs base {base.dtype}: fp8 values cannot be decoded to compare across formats"
    if trained.numel == 0:
        return "empty"
    return None


def _mostly_holes(checkpoint: Checkpoint, info: TensorInfo, which: str) -> str | None:
    """Why a tensor is not compared when most of it was never written (a sparse file: LD206), else None."""
    if info.nbytes and 2 * hole_bytes(checkpoint, info) >= info.nbytes:
        return f"{which}data mostly in holes of a sparse file (never written)"
    return None


def _file_opener(stack: ExitStack, root: str) -> Callable[[str], Any]:
    from .files import open_regular

    handles: dict[str, Any] = {}

    def open_file(rel: str) -> Any:
        if rel not in handles:
            handles[rel] = stack.enter_context(open_regular(os.path.join(root, rel), what="weights file", buffering=0))
        return handles[rel]

    return open_file


def compare_checkpoints(trained: Checkpoint, base: Checkpoint, *, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                        progress: bool = False) -> Comparison:
    """Compare every tensor present in both checkpoints (same canonical key); `progress` shows a bar after 1 s."""
    started = time.perf_counter()
    buffer_bytes = max(64, buffer_bytes - buffer_bytes % 8)
    buffers = (bytearray(buffer_bytes), bytearray(buffer_bytes))
    result = Comparison()
    base_names = pairing_keys(base)
    result.base_components = frozenset(base.tensors[name].component for name in base_names.values())
    pairs: list[tuple[TensorInfo, TensorInfo]] = []
    for key, name in pairing_keys(trained).items():
        info = trained.tensors[name]
        result.components[name] = info.component
        if key not in base_names:
            result.unpaired[name] = info.component
            continue
        base_info = base.tensors[base_names[key]]
        reason = _why_not_comparable(info, base_info) or _mostly_holes(trained, info, "") or _mostly_holes(base, base_info, "base ")
        if reason:
            result.skipped[name] = reason
        else:
            pairs.append((info, base_info))
    pairs.sort(key=lambda p: (p[0].file, p[0].offset or 0, p[0].name))
    bar = progress_bar(sum((info.nbytes or 0) + (b.nbytes or 0) for info, b in pairs), progress, "comparing with base")
    with ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        open_trained, open_base = _file_opener(stack, trained.root), _file_opener(stack, base.root)
        for info, base_info in pairs:
            fmt, base_fmt = BIT_FORMATS[info.dtype], BIT_FORMATS[base_info.dtype]
            rounding = tolerance(info.dtype, base_info.dtype)
            difference = _Difference(fmt, base_fmt, rounding)
            try:
                left = tensor_bit_chunks(trained, info, fmt, buffers[0], open_trained)
                right = tensor_bit_chunks(base, base_info, base_fmt, buffers[1], open_base)
                for a, b in _aligned(left, right):
                    difference.add(a, b)
                    result.bytes_read += a.nbytes + b.nbytes
                    if bar is not None:
                        bar.update(a.nbytes + b.nbytes)
            except Exception as exc:  # unreadable data: reported by the comparison's coverage, never a traceback
                result.errors[info.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                continue
            result.tensors[info.name] = TensorDiff(
                name=info.name,
                base_name=base_info.name,
                component=info.component,
                changed=difference.differing > 0,
                differing=difference.differing,
                max_abs_diff=difference.max_abs,
                tolerance=rounding,
            )
    result.seconds = time.perf_counter() - started
    return result


def cached_comparison(trained: Checkpoint, base: Checkpoint, *, progress: bool = False) -> Comparison:
    """The comparison of `trained` with `base`, computed once and shared by LD302 and LD303."""
    cached = trained.notes.get(COMPARE_NOTE)
    if isinstance(cached, tuple) and cached[0] is base:
        return cached[1]
    result = compare_checkpoints(trained, base, progress=progress)
    trained.notes[COMPARE_NOTE] = (base, result)
    return result


def computed_comparison(trained: Checkpoint, base: Checkpoint) -> Comparison | None:
    """The comparison if a check already computed it (the report's coverage table never starts one)."""
    cached = trained.notes.get(COMPARE_NOTE)
    return cached[1] if isinstance(cached, tuple) and cached[0] is base else None


def expected_changes(stage: str, config: dict | None) -> dict[str, bool]:
    """Component -> whether `stage` trains it (so it should differ from the base); LoRA adapters excluded."""

    policy = expected_trainable(stage, vision_tower_unfrozen(config))
    return {component: trains for component, trains in policy.items() if component != "lora"}


# --- wording shared by the checks that report comparisons (LD302-LD304) ------------------------

EXAMPLES_SHOWN = 2

# why the component should be unchanged, per stage
STAGE_POLICY = {
    "pretrain": "stage pretrain trains only the projector",
    "finetune": "stage finetune keeps the vision tower frozen (unfreeze_mm_vision_tower is not set)",
    "lora": "stage lora trains only the LoRA adapters and the projector",
}


def not_compared(coverage: Coverage) -> str:
    """Why none of a component's tensors could be compared, in one clause."""
    parts = []
    if coverage.no_counterpart:
        parts.append(f"{coverage.no_counterpart} have no counterpart in the base")
    if coverage.not_comparable:
        parts.append(f"{coverage.not_comparable} differ in a way that rules out comparing them")
    if coverage.unreadable:
        parts.append(f"{coverage.unreadable} could not be read")
    reason = f" (e.g. {coverage.example_reason})" if coverage.example_reason else ""
    return ", ".join(parts) + reason


def tolerance_note(diffs) -> str:
    """', compared across dtypes within <tolerance>' when some pairs had different dtypes."""
    notes = sorted({d.tolerance.describe() for d in diffs if d.tolerance is not None})
    return f"; compared across dtypes within {' / '.join(notes)}" if notes else ""


def format_delta(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "NaN" if value != value else f"{value:.3g}"


def example_names(diffs, limit: int = EXAMPLES_SHOWN) -> str:
    return findings.example_names(diffs, limit)


def max_delta(diffs) -> float | None:
    values = [d.max_abs_diff for d in diffs if d.max_abs_diff is not None]
    numbers = [v for v in values if v == v]
    if numbers:
        return max(numbers)
    return values[0] if values else None
