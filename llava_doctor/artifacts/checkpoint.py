"""The Checkpoint artifact: what readers produce and checkpoint checks consume.

Pure data. Readers (``llava_doctor.artifacts.readers``) fill it without loading tensor data;
checks read shapes/dtypes from ``tensors`` and, under ``--deep``, data through ``scan``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, ClassVar, Iterator

COMPONENTS = ("vision_tower", "projector", "language_model", "lm_head", "image_newline", "lora", "other")

# safetensors dtype string -> bytes per element
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "C64": 8, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
SHARD_NAME = re.compile(r"-\d+-of-\d+\.(safetensors|bin)$")


@dataclass(frozen=True)
class TensorInfo:
    name: str  # key as the loading code will see it (inside the state dict; file-level wrappers removed)
    shape: tuple[int, ...]
    dtype: str  # safetensors-style dtype string, see DTYPE_SIZES
    file: str  # path of the file holding it, relative to Checkpoint.root
    component: str = "other"
    offset: int | None = None  # absolute byte offset of the raw little-endian data in `file`, if addressable
    nbytes: int | None = None

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def is_empty(self) -> bool:
        return 0 in self.shape


@dataclass(frozen=True)
class CheckpointFile:
    path: str  # relative to Checkpoint.root
    size: int
    kind: str  # safetensors | torch | index | config | deepspeed-model-states | deepspeed-optim-states | adapter-config | other


@dataclass(frozen=True)
class IntegrityProblem:
    """A structural defect found while reading (reported by LD206)."""

    kind: str  # missing-shard | missing-key | unindexed-key | duplicate-key | offset-out-of-file | overlap | truncated | bad-header | header-too-large | bad-index | unreadable
    file: str
    detail: str  # one line, observed vs expected
    key: str | None = None


@dataclass(frozen=True)
class FileHoles:
    """Byte ranges [start, end) of a weight file that were never written (a sparse file), found without reading."""

    holes: tuple[tuple[int, int], ...]
    cut: bool = False  # more holes exist than were listed

    @property
    def bytes(self) -> int:
        return sum(end - start for start, end in self.holes)


@dataclass(frozen=True)
class UnsafePickle:
    """A pickle that needs globals outside the allow-list; it was not loaded (reported by LD207)."""

    file: str
    globals: tuple[str, ...]


@dataclass
class DeepSpeedInfo:
    stage: int | None
    tag: str  # e.g. global_step3
    world_size: int | None
    model_state_files: list[str]
    param_shapes: dict[str, tuple[int, ...]]  # trainable params, all groups merged
    frozen_param_shapes: dict[str, tuple[int, ...]]
    buffer_names: list[str]
    ds_config: dict[str, Any] | None
    ds_version: str | None
    consolidated: list[str]  # files beside it holding full weights (save_16bit_model, zero_to_fp32 output), relative
    resumable: bool = False  # an HF Trainer checkpoint-N folder (trainer_state.json beside it): training resumes from it


@dataclass
class Checkpoint:
    kind: ClassVar[str] = "Checkpoint"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)
    root: str  # absolute directory (or the file's directory)
    name: str  # what the user passed, for messages
    format: str  # safetensors | safetensors-sharded | torch | deepspeed | peft | mixed | empty
    layout: str  # see layout.LAYOUTS
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    config_kind: str | None = None  # hf-llava | hf-llava-next | hf-llava-onevision | llava-original | hf-other | None
    files: list[CheckpointFile] = field(default_factory=list)
    integrity: list[IntegrityProblem] = field(default_factory=list)
    unsafe: list[UnsafePickle] = field(default_factory=list)
    deepspeed: DeepSpeedInfo | None = None
    adapter_config: dict[str, Any] | None = None
    file_tensors: dict[str, int] = field(default_factory=dict)  # weight file read without defects -> tensors it holds
    holes: dict[str, FileHoles] = field(default_factory=dict)  # weight file -> its never-written byte ranges
    notes: dict[str, Any] = field(default_factory=dict)  # reader facts other checks may use
    loader: Callable[[TensorInfo], Any] | None = field(default=None, repr=False)  # -> torch.Tensor, for non-addressable tensors

    def by_component(self) -> dict[str, list[TensorInfo]]:
        groups: dict[str, list[TensorInfo]] = {c: [] for c in COMPONENTS}
        for info in self.tensors.values():
            groups.setdefault(info.component, []).append(info)
        return groups

    def components_present(self) -> set[str]:
        return {info.component for info in self.tensors.values()}

    def iter_tensors(self) -> Iterator[TensorInfo]:
        return iter(sorted(self.tensors.values(), key=lambda t: t.name))

    def is_lone_shard(self) -> bool:
        """One shard of a sharded set given alone (model-00002-of-00003.safetensors): it holds only some components."""
        weights = {t.file for t in self.tensors.values()}
        return len(weights) == 1 and "index" not in self.notes and bool(SHARD_NAME.search(next(iter(weights))))

    def load_tensor(self, info: TensorInfo) -> Any:
        if self.loader is None:
            raise RuntimeError(f"{self.name}: no loader for tensor {info.name}")
        return self.loader(info)
