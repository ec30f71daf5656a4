"""In-memory base/trained checkpoint pairs for LD302 and LD303's examples (numpy data, no files)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from llava_doctor.registry import Context

from ._checkpoint_examples import checkpoint

# original-LLaVA key -> (shape, numpy dtype name); one or two tensors per component
TENSORS = {
    "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": ((8, 8), "float16"),
    "model.vision_tower.vision_tower.vision_model.post_layernorm.weight": ((8,), "float32"),
    "model.mm_projector.0.weight": ((8, 8), "float32"),
    "model.mm_projector.0.bias": ((8,), "float32"),
    "model.embed_tokens.weight": ((16, 8), "float16"),
    "model.layers.0.self_attn.q_proj.weight": ((8, 8), "float16"),
    "model.norm.weight": ((8,), "float32"),
    "lm_head.weight": ((16, 8), "float16"),
}
# the same tensors under transformers 5.x on-disk keys
HF_KEYS = {
    "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": "vision_tower.encoder.layers.0.mlp.fc1.weight",
    "model.vision_tower.vision_tower.vision_model.post_layernorm.weight": "vision_tower.post_layernorm.weight",
    "model.mm_projector.0.weight": "multi_modal_projector.linear_1.weight",
    "model.mm_projector.0.bias": "multi_modal_projector.linear_1.bias",
    "model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight": "language_model.model.layers.0.self_attn.q_proj.weight",
    "model.norm.weight": "language_model.model.norm.weight",
    "lm_head.weight": "language_model.lm_head.weight",
}
COMPONENT_PREFIXES = {
    "vision_tower": "model.vision_tower.",
    "projector": "model.mm_projector.",
    "lm_head": "lm_head.",
}


def _component(key: str) -> str:
    for component, prefix in COMPONENT_PREFIXES.items():
        if key.startswith(prefix):
            return component
    return "language_model"


def _arrays(changed: Iterable[str], *, drop: Iterable[str] = ()) -> dict[str, Any]:
    """The base's values (seeded), with every tensor of the `changed` components nudged by a small step."""
    import numpy as np

    rng = np.random.default_rng(0)
    changed, drop = set(changed), set(drop)
    data = {}
    for key, (shape, dtype) in TENSORS.items():
        if _component(key) in drop:
            continue
        value = (np.round(rng.standard_normal(shape) * 64) / 64).astype(dtype)  # exact in float16, so Δ is exactly 0.25
        if _component(key) in changed:
            value.reshape(-1)[:3] += np.asarray(0.25, dtype=dtype)
        data[key] = value
    return data


def _build(data: dict[str, Any], *, hf: bool = False, config: dict | None = None, name: str = "trained"):
    if hf:
        data = {HF_KEYS[k]: v for k, v in data.items()}
    return checkpoint({k: v.shape for k, v in data.items()}, data=data, config=config, name=name)


def pair(
    stage: str | None,
    changed: Iterable[str],
    *,
    base: bool = True,
    base_hf: bool = False,
    base_drop: Iterable[str] = (),
    base_dtype: str | None = None,
    base_reshaped: Iterable[str] = (),
    config: dict | None = None,
) -> tuple[Callable[[], Any], Callable[[], Context]]:
    """(build, context) for an Example: trained differs from its base exactly in `changed` components.

    `base_dtype` stores every base tensor in that numpy dtype (an fp16 base of an fp32 run);
    `base_reshaped` components get one extra row in the base, so that they cannot be compared.
    """
    changed, base_drop, base_reshaped = tuple(changed), tuple(base_drop), tuple(base_reshaped)

    def build():
        return _build(_arrays(changed), config=config)

    def context() -> Context:
        companion = None
        if base:
            import numpy as np

            data = _arrays((), drop=base_drop)
            if base_dtype:
                data = {k: v.astype(base_dtype) for k, v in data.items()}
            for key in [k for k in data if _component(k) in base_reshaped]:
                data[key] = np.concatenate([data[key], data[key][:1]])
            companion = _build(data, hf=base_hf, name="base")
        return Context(deep=True, stage=stage, base=companion)

    return build, context


TOWER_PREFIX = "model.vision_tower.vision_tower."


def tower_pair(
    tower: str,
    *,
    config: dict | None = None,
    base_vision_model: bool = True,
    base: bool = True,
) -> tuple[Callable[[], Any], Callable[[], Context]]:
    """(build, context) for LD304: an original-LLaVA checkpoint and its base tower as a vision-only checkpoint.

    `tower` is "base" (the checkpoint's tower equals the base), "random" (every tower tensor redrawn)
    or "one" (only the first tower tensor nudged). The base is handed over as the
    ``vision_tower_base`` option, standing in for the folder that ``mm_vision_tower`` names.
    """
    import numpy as np

    settings = {"mm_vision_tower": "/nonexistent-example/base-tower", "mm_hidden_size": 8, **(config or {})}

    def build():
        data = _arrays(())
        tower_keys = [k for k in data if k.startswith(TOWER_PREFIX)]
        rng = np.random.default_rng(1)
        for index, key in enumerate(tower_keys):
            if tower == "random" or (tower == "one" and index == 0):
                data[key] = rng.standard_normal(data[key].shape).astype(data[key].dtype)
        return _build(data, config=settings)

    def context() -> Context:
        if not base:
            return Context(deep=True)
        strip = len(TOWER_PREFIX) + (0 if base_vision_model else len("vision_model."))
        tower_data = {k[strip:]: v for k, v in _arrays(()).items() if k.startswith(TOWER_PREFIX)}
        companion = checkpoint({k: v.shape for k, v in tower_data.items()}, data=tower_data, name="base-tower")
        return Context(deep=True, options={"vision_tower_base": companion})

    return build, context
