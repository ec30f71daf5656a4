"""Trained checkpoint vs. its base, tensor by tensor: which tensors changed and by how much (--deep).

Tensors are paired by canonical key (``layout.canonical_key``), so base and trained may use
different key layouts (e.g. an hf-llava base and an original-LLaVA fine-tune). PEFT wrappers are
seen through: ``base_model.model.`` prefixes and ``.base_layer.`` are dropped before pairing, and
LoRA adapters themselves have no counterpart in a base. Paired tensors of the same shape and float
dtype are compared on their raw bits, chunk by chunk, with one reused buffer per side (the readers
of ``llava_doctor.scan``); the absolute difference is computed only on chunks whose bits differ.
Pairs whose shape or dtype differ are not compared (a dtype cast alone changes every value) and are
listed in ``Comparison.skipped``. The result is computed once per (trained, base) pair and kept in
``trained.notes['compare']``.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .artifacts.checkpoint import Checkpoint, TensorInfo
from .layout import canonical_key, detect_layout, strip_peft_prefix, vision_tower_unfrozen
from .stages import expected_trainable
from .scan import BIT_FORMATS, DEFAULT_BUFFER_BYTES, BitFormat, progress_bar, tensor_bit_chunks

COMPARE_NOTE = "compare"
_COMPUTE_SLICE_BYTES = 1 << 20  # decoded temporaries stay in cache: measured ~2.5x faster for bf16 than whole 4 MiB chunks
PEFT_LAYOUTS = ("peft-adapter", "llava-original-lora")


@dataclass(frozen=True)
class TensorDiff:
    name: str  # key in the trained checkpoint
    base_name: str  # key of its counterpart in the base
    component: str
    changed: bool  # some element's bits differ
    differing: int = 0  # elements whose bits differ
    max_abs_diff: float | None = None  # over those elements; None when unchanged or the dtype cannot be decoded (fp8)


@dataclass
class Comparison:
    tensors: dict[str, TensorDiff] = field(default_factory=dict)  # by trained key
    skipped: dict[str, str] = field(default_factory=dict)  # trained key -> why the pair was not compared
    errors: dict[str, str] = field(default_factory=dict)  # trained key -> why its data could not be read
    bytes_read: int = 0
    seconds: float = 0.0

    def by_component(self) -> dict[str, list[TensorDiff]]:
        groups: dict[str, list[TensorDiff]] = {}
        for diff in sorted(self.tensors.values(), key=lambda d: d.name):
            groups.setdefault(diff.component, []).append(diff)
        return groups


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


def decode(bits: np.ndarray, fmt: BitFormat) -> np.ndarray | None:
    """Float values of raw bits (bf16 via the top half of a float32); None for formats numpy lacks (fp8)."""
    if fmt.uint is np.uint16:
        if fmt.expmask == 0x7F80:
            return (bits.astype(np.uint32) << 16).view(np.float32)
        return bits.view(np.float16).astype(np.float32)
    if fmt.uint is np.uint32:
        return bits.view(np.float32)
    if fmt.uint is np.uint64:
        return bits.view(np.float64)
    return None


class _Difference:
    """Folds aligned chunk pairs of one tensor into (differing elements, max |Δ|)."""

    def __init__(self, fmt: BitFormat) -> None:
        self.fmt = fmt
        self.differing = 0
        self.max_abs: float | None = None

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
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
        if top is None:
            return
        if self.max_abs is None or self.max_abs != self.max_abs:
            self.max_abs = top
        elif top == top:
            self.max_abs = max(self.max_abs, top)

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
    """Equal-length slices of two chunk streams of the same total length (their chunk sizes may differ)."""
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
    if trained.dtype != base.dtype:
        return f"dtype {trained.dtype} vs base {base.dtype}"
    if trained.dtype not in BIT_FORMATS:
        return f"dtype {trained.dtype} is not a float format"
    if trained.numel == 0:
        return "empty"
    return None


def _file_opener(stack: ExitStack, root: str) -> Callable[[str], Any]:
    handles: dict[str, Any] = {}

    def open_file(rel: str) -> Any:
        if rel not in handles:
            handles[rel] = stack.enter_context(open(os.path.join(root, rel), "rb", buffering=0))
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
    pairs: list[tuple[TensorInfo, TensorInfo]] = []
    for key, name in pairing_keys(trained).items():
        if key not in base_names:
            continue
        info, base_info = trained.tensors[name], base.tensors[base_names[key]]
        reason = _why_not_comparable(info, base_info)
        if reason:
            result.skipped[name] = reason
        else:
            pairs.append((info, base_info))
    pairs.sort(key=lambda p: (p[0].file, p[0].offset or 0, p[0].name))
    bar = progress_bar(sum(2 * (info.nbytes or 0) for info, _ in pairs), progress, "comparing with base")
    with ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        open_trained, open_base = _file_opener(stack, trained.root), _file_opener(stack, base.root)
        for info, base_info in pairs:
            fmt = BIT_FORMATS[info.dtype]
            difference = _Difference(fmt)
            try:
                left = tensor_bit_chunks(trained, info, fmt, buffers[0], open_trained)
                right = tensor_bit_chunks(base, base_info, fmt, buffers[1], open_base)
                for a, b in _aligned(left, right):
                    difference.add(a, b)
                    result.bytes_read += 2 * a.nbytes
                    if bar is not None:
                        bar.update(2 * a.nbytes)
            except Exception as exc:  # unreadable data is reported elsewhere (LD206), never a traceback
                result.errors[info.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                continue
            result.tensors[info.name] = TensorDiff(
                name=info.name,
                base_name=base_info.name,
                component=info.component,
                changed=difference.differing > 0,
                differing=difference.differing,
                max_abs_diff=difference.max_abs,
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


def format_delta(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "NaN" if value != value else f"{value:.3g}"


def example_names(diffs, limit: int = EXAMPLES_SHOWN) -> str:
    names = [d.name for d in diffs]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def max_delta(diffs) -> float | None:
    values = [d.max_abs_diff for d in diffs if d.max_abs_diff is not None]
    numbers = [v for v in values if v == v]
    if numbers:
        return max(numbers)
    return values[0] if values else None
