"""LD204: NaN or Inf values in a checkpoint tensor (--deep)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint
from ._live_examples import backward, hf_llava, live, on_meta, poisoned


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


def nonfinite_message(name: str, nan: int, inf: int, count: int, where: str) -> str:
    parts = [f"{n:,} {label}" for n, label in ((nan, "NaN"), (inf, "Inf")) if n]
    return f"{name}: {' and '.join(parts)} of {count:,} values ({where}); expected all finite"


def _unreadable():
    data = _arrays()
    shapes = {**{k: v.shape for k, v in data.items()}, "model.layers.0.mlp.down_proj.weight": (8, 16)}
    return checkpoint(shapes, data=data, config={"mm_hidden_size": 8})  # the loader has no data for down_proj


class NonFiniteValues(Check):
    code = "LD204"
    title = "NaN or Inf values in a tensor"
    artifact = ("Checkpoint", "LiveModel")
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
        Example("live: a healthy model after a backward", live(lambda: backward(hf_llava()))),
    )
    invalid = (
        Example("a tensor whose data cannot be read is not passed as finite", _unreadable, count=1,
                contains=("1 tensor(s) could not be read", "model.layers.0.mlp.down_proj.weight")),
        Example("one NaN in a projector bias", _example("model.mm_projector.2.bias"),
                count=1, contains=("model.mm_projector.2.bias", "1 NaN")),
        Example("Inf in an fp16 LLM weight", _example("model.layers.0.mlp.up_proj.weight", float("inf"), 3),
                count=1, contains=("model.layers.0.mlp.up_proj.weight", "3 Inf", "of 128")),
        Example("live: NaN in a projector weight", live(lambda: poisoned(hf_llava(), "multi_modal_projector.linear_1.weight")),
                count=1, contains=("multi_modal_projector.linear_1.weight: 3 NaN of 1,024 values (projector, float32, cpu)",)),
        Example("live: an infinite loss back-propagated", live(lambda: backward(hf_llava(), scale=float("inf"))),
                count=2, contains=("language_model: the gradients of 20 of 20 tensors hold non-finite values", "lm_head: ")),
        Example("live: a model on the meta device", live(lambda: on_meta(hf_llava)), count=1,
                contains=("values not checked for 64 of 64 parameters: on the meta device",)),
    )

    def run_checkpoint(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.scan import cached_scan

        scan = cached_scan(artifact, progress=bool(context.option("progress", False)))
        for name, result in sorted(scan.tensors.items()):
            if result.finite:
                continue
            info = artifact.tensors[name]
            yield self.finding(
                nonfinite_message(name, result.nan, result.inf, result.numel, f"{info.component}, {result.dtype}"),
                artifact=artifact.name,
                location=f"{info.file}:{name}",
                observed={"nan": result.nan, "inf": result.inf},
                expected="finite",
                component=info.component,
            )
        if scan.errors:
            yield self._unread(artifact, scan.errors)

    def _unread(self, artifact, errors: dict) -> Finding:
        """Tensors the scan could not read: their values were not checked (never a silent pass)."""
        name = sorted(errors)[0]
        return self.finding(
            f"{len(errors)} tensor(s) could not be read, so their values were not checked for NaN/Inf (e.g. {name}: "
            f"{errors[name]}); expected every tensor readable",
            artifact=artifact.name, location=f"{artifact.tensors[name].file}:{name}", severity=Severity.WARNING,
            observed="unreadable", expected="readable", tensors=sorted(errors),
            fix="See LD206 for why the file cannot be read; re-copy or re-export the checkpoint.",
        )

    def run_live_model(self, artifact, context: Context) -> Iterable[Finding]:
        """Live: values on the parameters' own devices (per-rank partitions combined under ZeRO-3), and the
        gradients a backward left (p.grad, or DeepSpeed's ZeRO-3 gradient partitions)."""
        from llava_doctor.artifacts.live_stats import ValueStats

        unread: dict[str, list] = {}
        for param, stats in zip(artifact.parameters, artifact.values()):
            if not isinstance(stats, ValueStats):
                unread.setdefault(stats, []).append(param)
            elif not stats.finite:
                yield self.finding(
                    nonfinite_message(param.name, stats.nan, stats.inf, stats.count, f"{param.component}, {param.dtype}, {param.device}"),
                    artifact=artifact.name, location=param.name, observed={"nan": stats.nan, "inf": stats.inf},
                    expected="finite", component=param.component,
                )
        for reason, params in sorted(unread.items(), key=lambda item: item[0]):
            if "holds no NaN/Inf" in reason:
                continue
            yield self.finding(
                f"values not checked for {len(params)} of {len(artifact.parameters)} parameters: {reason} "
                f"(e.g. {params[0].name}); their shapes were checked",
                artifact=artifact.name, location=params[0].name, severity=Severity.INFO,
                observed="not read", expected="readable values", tensors=[p.name for p in params],
                fix="Inspect the model once its weights are materialised and resident (after loading, before offloading).",
            )
        gradients = artifact.gradients()
        broken: dict[str, list] = {}
        for param, stats in zip(artifact.parameters, gradients):
            if isinstance(stats, ValueStats) and not stats.finite:
                broken.setdefault(param.component, []).append((param, stats))
        for component, pairs in sorted(broken.items()):
            first = pairs[0][0]
            nan, inf = sum(s.nan for _, s in pairs), sum(s.inf for _, s in pairs)
            with_grad = sum(1 for p, g in zip(artifact.parameters, gradients) if p.component == component and isinstance(g, ValueStats))
            counts = " and ".join(f"{n:,} {label}" for n, label in ((nan, "NaN"), (inf, "Inf")) if n)
            yield self.finding(
                f"{component}: the gradients of {len(pairs)} of {with_grad} tensors hold non-finite values "
                f"({counts} in all, e.g. {first.name}.grad); expected all finite after the backward",
                artifact=artifact.name, location=f"{first.name}.grad", observed={"nan": nan, "inf": inf},
                expected="finite", component=component, gradient=True, tensors=[p.name for p, _ in pairs],
            )
        missing = [p for p, g in zip(artifact.parameters, gradients)
                   if p.requires_grad and not isinstance(g, ValueStats) and g not in ("no gradient yet", "frozen")]
        if missing:
            yield self.finding(
                f"gradients not checked for {len(missing)} trainable parameters: "
                f"{gradients[artifact.parameters.index(missing[0])]} (e.g. {missing[0].name})",
                artifact=artifact.name, location=missing[0].name, severity=Severity.INFO,
                observed="not read", expected="readable gradients", tensors=[p.name for p in missing],
                fix="Watch the gradient norm DeepSpeed logs instead (`llava-doctor logs trainer_state.json`); ZeRO-3 "
                    "engines and plain models expose per-parameter gradients between backward and step.",
            )
