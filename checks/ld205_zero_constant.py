"""LD205: all-zero or constant tensors (--deep)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.schema import zero_by_design
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint

EXAMPLES_SHOWN = 3


def _constant_by_design(ndim: int) -> bool:
    """1-D constants are norm weights (1.0) and biases; only matrices are reported as constant."""
    return ndim < 2


def _model(zero: tuple[str, ...] = (), constant: tuple[str, ...] = ()) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    data = {
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((8, 8)).astype(np.float16),
        "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((8, 8)).astype(np.float16),
        "model.layers.0.input_layernorm.weight": np.ones(8, dtype=np.float32),
        "model.layers.0.mlp.up_proj.bias": np.zeros(8, dtype=np.float32),
        "model.mm_projector.0.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "model.mm_projector.0.bias": np.zeros(8, dtype=np.float32),
        "model.image_newline": rng.standard_normal(8).astype(np.float32),
        # SigLIP's attention-pooling head (OneVision): nn.MultiheadAttention starts in_proj_bias at 0
        "model.vision_tower.vision_tower.vision_model.head.attention.in_proj_bias": np.zeros(24, dtype=np.float32),
    }
    for name in zero:
        data[name][...] = 0
    for name in constant:
        data[name][...] = 0.5
    return data


def _example(zero: tuple[str, ...] = (), constant: tuple[str, ...] = ()):
    def build():
        data = _model(zero, constant)
        return checkpoint({k: v.shape for k, v in data.items()}, data=data, config={"mm_hidden_size": 4})

    return build


class ZeroOrConstantTensors(Check):
    code = "LD205"
    title = "all-zero or constant tensors"
    artifact = "Checkpoint"
    severity = Severity.WARNING
    deep = True
    rationale = """
    A weight matrix whose elements are all zero or all one value was never initialised or never
    written: a layer built with `torch.zeros`/`torch.empty` and saved before its weights were
    loaded, a projector replaced by a fresh module, a tensor zeroed by a failed conversion, or a
    sparse/hole-punched file copied without its data. It loads without any message (shapes are
    right) and the model then produces the same output for every input, e.g. an all-zero
    projector makes the answer independent of the image. Biases and LayerNorm bias start at 0 (so
    does `in_proj_bias` of SigLIP's attention-pooling head in LLaVA-OneVision, an
    nn.MultiheadAttention), LayerNorm/RMSNorm weights at 1.0 and LoRA B at 0 by design, so those
    are not reported (the table in `llava_doctor.schema.ZERO_BY_DESIGN`, checked against the
    initialisation of the LLaVA-family classes by a test); a 1-D weight that is all zero (a norm
    scale of 0 silences its layer) is. Tensors lying in holes of a sparse file are LD206's.
    """
    fix = """
    Find where the tensor comes from: if the base model has real values, the save or conversion
    dropped them (re-export from the training checkpoint, gathering ZeRO-3 parameters first); if
    the module was newly created, make sure its pretrained weights are loaded (e.g.
    `--pretrain_mm_mlp_adapter mm_projector.bin`) before training or saving.
    """
    valid = (
        Example("trained weights, zero biases, unit norm weights", _example()),
    )
    invalid = (
        Example("zeroed projector matrix", _example(zero=("model.mm_projector.0.weight",)),
                count=1, contains=("model.mm_projector.0.weight", "all zero", "projector")),
        Example("constant attention matrices", _example(constant=("model.layers.0.self_attn.q_proj.weight",
                                                                   "model.layers.0.self_attn.k_proj.weight")),
                count=1, contains=("2 of", "constant 0.5", "q_proj")),
        Example("zero norm weight and zero image_newline",
                _example(zero=("model.layers.0.input_layernorm.weight", "model.image_newline")),
                count=2, contains=("input_layernorm.weight", "model.image_newline")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.scan import cached_scan

        scan = cached_scan(artifact, progress=bool(context.option("progress", False)))
        groups: dict[tuple[str, str], list[str]] = {}
        values: dict[str, float | None] = {}
        for name, result in scan.tensors.items():
            info = artifact.tensors[name]
            ndim = len(info.shape)
            if result.in_hole:
                continue  # never written: LD206 reports the hole
            if result.all_zero and not zero_by_design(name, ndim):
                groups.setdefault((info.component, "all zero"), []).append(name)
            elif result.constant and not _constant_by_design(ndim):
                groups.setdefault((info.component, "constant"), []).append(name)
                values[name] = result.value
        totals = {component: len(infos) for component, infos in artifact.by_component().items()}
        for (component, kind), names in sorted(groups.items()):
            names.sort()
            yield self._grouped(artifact, component, kind, names, totals.get(component, len(names)), values)

    def _grouped(self, artifact, component: str, kind: str, names: list[str], total: int, values: dict) -> Finding:
        first = artifact.tensors[names[0]]
        if kind == "constant":
            distinct = sorted({values[n] for n in names}, key=repr)
            kind = f"constant {_fmt(distinct[0])}" if len(distinct) == 1 else "constant"
        if len(names) == 1:
            message = f"{names[0]} ({component}, shape {list(first.shape)}) is {kind}; expected trained values"
        else:
            shown = ", ".join(names[:EXAMPLES_SHOWN]) + (", ..." if len(names) > EXAMPLES_SHOWN else "")
            message = f"{component}: {len(names)} of {total} tensors are {kind} (e.g. {shown}); expected trained values"
        return self.finding(
            message,
            artifact=artifact.name,
            location=f"{first.file}:{names[0]}",
            observed=kind,
            expected="varying values",
            component=component,
            tensors=names,
        )


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"
