"""LD204: NaN or Inf values in a checkpoint tensor (--deep)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint


def _arrays(poison: str | None = None, value: float = float("nan"), count: int = 1) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    data = {
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((16, 8)).astype(np.float16),
        "model.mm_projector.2.bias": rng.standard_normal(8).astype(np.float32),
        "model.norm.weight": np.ones(8, dtype=np.float32),
    }
    if poison:
        flat = data[poison].reshape(-1)
        flat[:count] = value
    return data


def _example(poison: str | None = None, value: float = float("nan"), count: int = 1):
    def build():
        data = _arrays(poison, value, count)
        return checkpoint({k: v.shape for k, v in data.items()}, data=data, config={"mm_hidden_size": 8})

    return build


class NonFiniteValues(Check):
    code = "LD204"
    title = "NaN or Inf values in a tensor"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    deep = True
    rationale = """
    A NaN or Inf in a saved weight loads silently: transformers 5 prints no load report for it and
    the NaN survives into every forward pass that touches the tensor. The first visible symptom is
    usually generation: NaN logits make greedy decoding pick token id 0 forever (Qwen2's id 0 is
    `!`, hence outputs like `!!!!!!!!!!!`), or sampling fails with `RuntimeError: probability
    tensor contains either inf, nan or element < 0`. Typical causes are fp16 overflow during
    training (Qwen2 in fp16), a diverged step that was checkpointed, and uninitialised memory
    (`torch.empty`) saved as a weight.
    """
    fix = """
    Do not use this checkpoint: resume from the last checkpoint whose scan is clean. Train in bf16
    rather than fp16 (fp16 overflows in Qwen2/Llama attention), lower the learning rate or enable
    gradient clipping, and check the run's log for the step where the loss or grad norm became
    NaN (`llava-doctor logs trainer_state.json`).
    """
    valid = (
        Example("clean tensors", _example()),
        Example("inf-free constant norm", _example("model.norm.weight", 1.0)),
    )
    invalid = (
        Example("one NaN in a projector bias", _example("model.mm_projector.2.bias"),
                count=1, contains=("model.mm_projector.2.bias", "1 NaN")),
        Example("Inf in an fp16 LLM weight", _example("model.layers.0.mlp.up_proj.weight", float("inf"), 3),
                count=1, contains=("model.layers.0.mlp.up_proj.weight", "3 Inf", "of 128")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.scan import cached_scan

        scan = cached_scan(artifact, progress=bool(context.option("progress", False)))
        for name, result in sorted(scan.tensors.items()):
            if result.finite:
                continue
            parts = [f"{n} {label}" for n, label in ((result.nan, "NaN"), (result.inf, "Inf")) if n]
            info = artifact.tensors[name]
            yield self.finding(
                f"{name}: {' and '.join(parts)} of {result.numel:,} values ({info.component}, {result.dtype}); expected all finite",
                artifact=artifact.name,
                location=f"{info.file}:{name}",
                observed={"nan": result.nan, "inf": result.inf},
                expected="finite",
                component=info.component,
            )
