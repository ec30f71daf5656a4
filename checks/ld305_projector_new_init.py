"""LD305: the projector holds an initializer's values, or not the pretrain_mm_mlp_adapter it should start from."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._live_examples import fresh_linear_projector, hf_llava, live, live_context, trained_projector

INFERENCE_OPTION = "loaded_for_inference"  # `llava-doctor inspect`: a loaded model's projector must be trained
ADAPTER_OPTION = "pretrain_mm_mlp_adapter"
UNIFORM_KURTOSIS, NORMAL_KURTOSIS = 1.8, 3.0
BOUND_SLACK = 1.01  # bf16/fp16 rounding may put a uniform draw a hair past its bound; one optimizer step moves it further


@dataclass(frozen=True)
class LinearValues:
    """One Linear layer of a projector: where it is, its fan-in and the moments of its weight and bias."""

    name: str  # the weight's name
    fan_in: int
    weight: Any  # live_stats.Moments
    bias: Any = None  # live_stats.Moments, or None for a Linear without bias


def _std_tolerance(count: int) -> float:
    return 0.02 + 6.0 / math.sqrt(2.0 * max(count, 1))


def _default_linear(layer: LinearValues) -> bool:
    """PyTorch's nn.Linear.reset_parameters: weight and bias uniform on ±1/sqrt(fan_in) (std bound/sqrt(3), kurtosis 1.8)."""
    bound = 1.0 / math.sqrt(layer.fan_in)
    for moments in (layer.weight, layer.bias):
        if moments is None:
            continue
        n = moments.count
        if moments.max_abs > bound * BOUND_SLACK or abs(moments.std / (bound / math.sqrt(3.0)) - 1.0) > _std_tolerance(n):
            return False
    weight = layer.weight
    return abs(weight.kurtosis - UNIFORM_KURTOSIS) <= 0.05 + 15.0 / math.sqrt(weight.count)


def _normal_zero_bias(layer: LinearValues, std: float) -> bool:
    """transformers' _init_weights for a Linear (and for keys missing at load): normal(0, initializer_range), bias 0."""
    if layer.bias is not None and layer.bias.max_abs != 0.0:
        return False
    weight = layer.weight
    n = weight.count
    return (abs(weight.std / std - 1.0) <= _std_tolerance(n) and abs(weight.mean) <= 6.0 * std / math.sqrt(n)
            and abs(weight.kurtosis - NORMAL_KURTOSIS) <= 0.05 + 30.0 / math.sqrt(n))


def initializer_of(layers: list[LinearValues], initializer_range: float | None) -> str | None:
    """The initializer every Linear of the projector still looks drawn from, or None (trained, or mixed)."""
    if not layers:
        return None
    if all(_default_linear(layer) for layer in layers):
        return "PyTorch's default nn.Linear init (uniform on ±1/sqrt(fan_in))"
    if initializer_range and all(_normal_zero_bias(layer, initializer_range) for layer in layers):
        return f"normal(0, {initializer_range:g}) init with zero biases (transformers' init of missing keys)"
    return None


def initializer_range(config: dict | None) -> float | None:
    config = config or {}
    value = config.get("initializer_range")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("initializer_range")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _evidence(layer: LinearValues, initializer: str) -> str:
    w = layer.weight
    if initializer.startswith("PyTorch"):
        shape = f"max |x| {w.max_abs:.4g} within 1/sqrt({layer.fan_in}) = {1 / math.sqrt(layer.fan_in):.4g}"
    else:
        shape = "biases all 0" if layer.bias is not None else "no bias"
    return f"{layer.name}: std {w.std:.4g}, {shape}, kurtosis {w.kurtosis:.2f}"


def _projector_checkpoint(values: str):
    """An original-LLaVA mm_projector (mlp2x_gelu, 96 -> 64 -> 64) whose arrays are a fresh nn.Linear draw or trained-like."""
    def build():
        import numpy as np

        from ._checkpoint_examples import checkpoint

        rng = np.random.default_rng(0)
        data = {}
        for index, fan_in in ((0, 96), (2, 64)):
            bound = 1 / math.sqrt(fan_in)
            if values == "uniform":
                weight, bias = rng.uniform(-bound, bound, (64, fan_in)), rng.uniform(-bound, bound, 64)
            else:  # trained: drifted past the bound, heavier tails
                weight, bias = rng.standard_t(5, (64, fan_in)) * bound, rng.normal(0, bound, 64)
            data[f"model.mm_projector.{index}.weight"] = weight.astype(np.float32)
            data[f"model.mm_projector.{index}.bias"] = bias.astype(np.float32)
        return checkpoint({k: v.shape for k, v in data.items()}, data=data, config={"mm_hidden_size": 96, "hidden_size": 64},
                          file="mm_projector.bin")

    return build


class ProjectorNewlyInitialised(Check):
    code = "LD305"
    title = "projector newly initialised"
    artifact = ("Checkpoint", "LiveModel")
    severity = Severity.ERROR
    deep = True
    rationale = """
    Fine-tuning starts from the projector pretraining produced: LLaVA's train.py loads it with
    `--pretrain_mm_mlp_adapter .../mm_projector.bin`, and a checkpoint's projector is what
    inference uses. When that load is skipped (no flag, a wrong path, keys that do not match a
    `strict=False` load) the projector keeps the values it was built with, and nothing fails: the
    model trains from a random projector or answers as if it saw no image. transformers reports it
    only as a load warning (`Some weights of LlavaLlamaForCausalLM were not initialized from the
    model checkpoint ... and are newly initialized: ['model.mm_projector.bias',
    'model.mm_projector.weight']`, haotian-liu/LLaVA#1345; LLaVA-VL/LLaVA-NeXT#155 "after the
    projector was added, the output became garbage"). The values tell: original LLaVA builds the
    projector after the LLM, so a fresh one is PyTorch's default Linear init, uniform on
    ±1/sqrt(fan_in) (every |x| within the bound, std bound/sqrt(3), kurtosis 1.8); transformers
    initialises missing keys with normal(0, initializer_range) and zero biases. Training moves
    weights past the uniform bound and biases off zero within a step. Checked on live models at the
    finetune / lora stage (a pretraining run starts from a fresh projector on purpose), on models
    loaded for inference, and with --deep on checkpoints; with `pretrain_mm_mlp_adapter` given, the
    live projector is also compared with that file (call it at the start of fine-tuning).
    """
    fix = """
    Load the pretraining projector before fine-tuning: pass `--pretrain_mm_mlp_adapter
    <pretrain run>/mm_projector.bin` (keys `model.mm_projector.*`; LLaVA strips everything up to
    `mm_projector.`), check that the load reports no missing keys, and that `mm_projector_type` /
    `mm_hidden_size` match the pretraining run. For inference, load the checkpoint the projector
    was saved in (or merge `mm_projector.bin` into it).
    """
    valid = (
        Example("live pretrain: a fresh projector is where pretraining starts",
                live(lambda: fresh_linear_projector(hf_llava()), stage="pretrain")),
        Example("live finetune, HF: a trained projector", live(lambda: trained_projector(hf_llava()), stage="finetune")),
        Example("checkpoint: a trained projector", _projector_checkpoint("trained")),
    )
    invalid = (
        Example("live finetune: a projector as LLaVA builds it, never given its mm_projector.bin",
                live(lambda: fresh_linear_projector(hf_llava()), stage="finetune"),
                count=1, contains=("projector: 2 of 2 Linear layers hold PyTorch's default nn.Linear init",
                                   "multi_modal_projector.linear_1.weight")),
        Example("live finetune, HF: the projector transformers initialised", live(hf_llava, stage="finetune"),
                count=1, contains=("normal(0, 0.02) init with zero biases",)),
        Example("a model loaded for inference with a fresh projector", live(hf_llava),
                context=live_context(loaded_for_inference=True), count=1, contains=("multi_modal_projector.linear_1.weight",)),
        Example("checkpoint: an mm_projector saved as PyTorch initialised it", _projector_checkpoint("uniform"), count=1,
                contains=("model.mm_projector.0.weight", "uniform on ±1/sqrt(fan_in)")),
    )

    # ------------------------------------------------------------------ live models

    def run_live_model(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.artifacts.live import load_evidence

        adapter = context.option(ADAPTER_OPTION)
        if adapter:
            yield from self._against_adapter(artifact, adapter)
        if not context.option(INFERENCE_OPTION) and artifact.stage not in ("finetune", "lora"):
            return
        layers = artifact.linear_layers("projector")
        moments = artifact.moments([i for w, b, _ in layers for i in (w, b) if i is not None])
        values = []
        for weight, bias, fan_in in layers:
            m_w, m_b = moments[weight], moments.get(bias) if bias is not None else None
            if isinstance(m_w, str) or isinstance(m_b, str):
                return  # not readable (meta, non-finite: LD204 says which)
            values.append(LinearValues(artifact.parameters[weight].name, fan_in, m_w, m_b))
        found = initializer_of(values, initializer_range(artifact.config))
        if found:
            where = f"stage {artifact.stage}" if artifact.stage else "loaded model"
            yield self._fresh(artifact.name, values, found, where + load_evidence(artifact, context.option("load_report"), "projector"))

    def _against_adapter(self, artifact, path: str) -> Iterable[Finding]:
        from llava_doctor.artifacts.live_compare import compare_with_checkpoint
        from llava_doctor.artifacts.readers import open_checkpoint
        from llava_doctor.findings import InputError

        try:
            reference = open_checkpoint(path)
        except InputError as exc:
            yield self.finding(f"pretrain_mm_mlp_adapter {path}: {exc}; the projector was not compared with it",
                               artifact=artifact.name, location=path, severity=Severity.WARNING)
            return
        indices = artifact.by_component().get("projector", [])
        deltas, skipped = compare_with_checkpoint(artifact, indices, reference)
        if not deltas:
            reason = next(iter(skipped.values()), "no projector tensors")
            yield self.finding(f"pretrain_mm_mlp_adapter {path}: no tensor pairs with the live projector ({reason}); "
                               f"the projector was not compared with it", artifact=artifact.name, location=path,
                               severity=Severity.WARNING)
            return
        changed = [i for i, d in deltas.items() if d.differing]
        if changed:
            names = [artifact.parameters[i].name for i in changed]
            largest = max((deltas[i].max_abs_diff for i in changed), default=float("nan"))
            yield self.finding(
                f"projector: {len(changed)} of {len(deltas)} tensors differ from pretrain_mm_mlp_adapter {path} "
                f"(e.g. {', '.join(names[:2])}), max |Δ| {largest:.3g}; expected equal at the start of fine-tuning: "
                f"the adapter was not loaded into this model",
                artifact=artifact.name, location=names[0], observed=f"{len(changed)} tensors differ", expected=f"equal to {path}",
                component="projector", tensors=names,
            )

    def _fresh(self, name: str, values: list[LinearValues], initializer: str, where: str, location: str | None = None) -> Finding:
        return self.finding(
            f"projector: {len(values)} of {len(values)} Linear layers hold {initializer} ({_evidence(values[0], initializer)}); "
            f"expected trained weights ({where}): the pretraining projector was never loaded",
            artifact=name, location=location or values[0].name, observed=initializer, expected="trained projector weights",
            component="projector", tensors=[v.name for v in values],
        )

    # ------------------------------------------------------------------ checkpoints

    def run_checkpoint(self, artifact, context: Context) -> Iterable[Finding]:
        """A saved projector is always a trained one: read its Linear layers' moments from the file."""
        projector = {info.name: info for info in artifact.by_component().get("projector", [])}
        values = []
        for name, info in sorted(projector.items()):
            if len(info.shape) != 2 or not name.endswith("weight") or info.numel == 0:
                continue
            weight = _file_moments(artifact, info)
            bias_info = projector.get(name[: -len("weight")] + "bias")
            bias = _file_moments(artifact, bias_info) if bias_info is not None else None
            if weight is None or (bias_info is not None and bias is None):
                return  # unreadable or non-finite: LD204 / LD206 say so
            values.append(LinearValues(name, info.shape[1], weight, bias))
        found = initializer_of(values, initializer_range(artifact.config))
        if found:
            first = artifact.tensors[values[0].name]
            yield self._fresh(artifact.name, values, found, "a saved projector", location=f"{first.file}:{first.name}")


def _file_moments(checkpoint, info) -> Any:
    """Moments of one tensor streamed from its file (bounded buffer); None when unreadable or not finite."""
    from contextlib import ExitStack

    import numpy as np

    from llava_doctor.artifacts.live_stats import Moments
    from llava_doctor.compare import _file_opener, decode
    from llava_doctor.scan import BIT_FORMATS, DEFAULT_BUFFER_BYTES, tensor_bit_chunks

    fmt = BIT_FORMATS.get(info.dtype)
    if fmt is None or info.numel == 0:
        return None
    sums = np.zeros(5)
    top = 0.0
    try:
        with ExitStack() as stack:
            for bits in tensor_bit_chunks(checkpoint, info, fmt, bytearray(DEFAULT_BUFFER_BYTES), _file_opener(stack, checkpoint.root)):
                x = decode(bits, fmt)
                if x is None or not np.isfinite(x).all():
                    return None
                x = x.astype(np.float64)
                sq = x * x
                sums += (x.size, x.sum(), sq.sum(), (sq * x).sum(), (sq * sq).sum())
                top = max(top, float(np.abs(x).max()) if x.size else 0.0)
    except Exception:  # unreadable data is LD206's to report
        return None
    return Moments.from_sums(*sums.tolist(), top)
