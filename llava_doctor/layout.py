"""Key naming schemes of every system llava-doctor reads, and the component of each key.

Pure functions over key names (and the config dict when there is one); no I/O, no torch.

Layouts (value of ``Checkpoint.layout``):

=====================  ===========================================================================
hf-llava               transformers 5.x on-disk: ``vision_tower.embeddings.*``, ``multi_modal_projector.*``,
                       ``language_model.model.*``, ``language_model.lm_head.*``, ``image_newline``
hf-llava-4x            transformers 4.x / llava-hf legacy on-disk: ``vision_tower.vision_model.*``, rest as above
hf-llava-memory        a raw 5.x in-memory ``state_dict()``: ``model.vision_tower.*``, ``model.multi_modal_projector.*``,
                       ``model.language_model.*``, ``lm_head.weight``, ``model.image_newline``
llava-original         haotian-liu/LLaVA and LLaVA-NeXT: ``model.mm_projector.*``, ``model.vision_tower.vision_tower.*``,
                       ``model.image_newline``, ``model.layers.*``, ``model.embed_tokens.*``, ``lm_head.weight``
llava-original-pretrain  only ``model.mm_projector.*`` (``mm_projector.bin`` of the pretrain stage)
llava-original-lora    PEFT adapter + ``non_lora_trainables.bin`` (``base_model.model.model.mm_projector.*``)
xtuner                 XTuner ``.pth``: ``llm.*``, ``visual_encoder.*``, ``projector.model.*`` (LoRA: ``llm.base_model.model.*``)
peft-adapter           a PEFT adapter alone: ``base_model.model.*lora_A/B*``
llm-only               a plain causal LM: ``model.layers.*``, ``lm_head.weight`` and nothing multimodal
vision-only            a bare CLIP/SigLIP vision model: ``embeddings.*`` / ``vision_model.*``
unknown                none of the above
=====================  ===========================================================================
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

LAYOUTS = {
    "hf-llava": "transformers 5.x Llava*ForConditionalGeneration, on-disk keys",
    "hf-llava-4x": "transformers 4.x Llava*ForConditionalGeneration (llava-hf legacy), on-disk keys",
    "hf-llava-memory": "transformers 5.x Llava*ForConditionalGeneration, in-memory state_dict keys",
    "llava-original": "original LLaVA / LLaVA-NeXT (LlavaLlamaForCausalLM, LlavaQwenForCausalLM)",
    "llava-original-pretrain": "original LLaVA pretrain stage (mm_projector.bin)",
    "llava-original-lora": "original LLaVA LoRA (adapter + non_lora_trainables.bin)",
    "xtuner": "XTuner LLaVAModel .pth (llm / visual_encoder / projector)",
    "peft-adapter": "PEFT adapter",
    "llm-only": "language model only",
    "vision-only": "vision encoder only",
    "unknown": "unrecognised key layout",
}

LORA_PATTERN = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")

# (prefix, component) rules per layout, first match wins; "" matches everything.
_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "hf-llava": (
        ("vision_tower.", "vision_tower"),
        ("multi_modal_projector.", "projector"),
        ("image_newline", "image_newline"),
        ("language_model.lm_head.", "lm_head"),
        ("lm_head.", "lm_head"),
        ("language_model.", "language_model"),
    ),
    "hf-llava-memory": (
        ("model.vision_tower.", "vision_tower"),
        ("model.multi_modal_projector.", "projector"),
        ("model.image_newline", "image_newline"),
        ("lm_head.", "lm_head"),
        ("model.language_model.", "language_model"),
    ),
    "llava-original": (
        ("model.vision_tower.", "vision_tower"),
        ("model.mm_projector.", "projector"),
        ("model.vision_resampler.", "projector"),
        ("model.image_newline", "image_newline"),
        ("lm_head.", "lm_head"),
        ("model.", "language_model"),
    ),
    "xtuner": (
        ("visual_encoder.", "vision_tower"),
        ("projector.", "projector"),
        ("llm.lm_head.", "lm_head"),
        ("llm.base_model.model.lm_head.", "lm_head"),
        ("llm.", "language_model"),
    ),
    "peft-adapter": (
        ("base_model.model.model.mm_projector.", "projector"),
        ("base_model.model.model.vision_tower.", "vision_tower"),
        ("base_model.model.lm_head.", "lm_head"),
        ("base_model.model.", "language_model"),
    ),
    "llm-only": (("lm_head.", "lm_head"), ("model.", "language_model"), ("transformer.", "language_model")),
    "vision-only": (("", "vision_tower"),),
}
_RULES["hf-llava-4x"] = _RULES["hf-llava"]
_RULES["llava-original-pretrain"] = _RULES["llava-original"]
_RULES["llava-original-lora"] = _RULES["peft-adapter"] + _RULES["llava-original"]


# Where each component's own module tree starts, per layout, so that the same tensor gets the same
# canonical name in every layout (used to compare a checkpoint with shapes built from its config).
_COMPONENT_ROOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "hf-llava": (
        ("vision_tower.", "vision_tower"),
        ("multi_modal_projector.", "projector"),
        ("image_newline", "image_newline"),
        ("language_model.lm_head.", "lm_head"),
        ("lm_head.", "lm_head"),
        # transformers 5.x under ZeRO-3 (a model from from_pretrained, saved by the Trainer) writes one
        # `model.` level more; a text model has no `model.` submodule, so the extra level is unambiguous
        ("language_model.model.model.", "language_model"),
        ("language_model.model.", "language_model"),
    ),
    "hf-llava-memory": _RULES["hf-llava-memory"],  # there every component's prefix is its root
    "llava-original": (
        ("model.vision_tower.vision_tower.", "vision_tower"),
        ("model.mm_projector.", "projector"),
        ("model.image_newline", "image_newline"),
        ("lm_head.", "lm_head"),
        ("model.", "language_model"),
    ),
    "xtuner": (
        ("visual_encoder.", "vision_tower"),
        ("projector.model.", "projector"),
        ("llm.lm_head.", "lm_head"),
        ("llm.model.", "language_model"),
    ),
    "llm-only": (("lm_head.", "lm_head"), ("model.", "language_model")),
    "vision-only": (("", "vision_tower"),),
}
_COMPONENT_ROOTS["hf-llava-4x"] = _COMPONENT_ROOTS["hf-llava"]
_COMPONENT_ROOTS["llava-original-pretrain"] = _COMPONENT_ROOTS["llava-original"]


def canonical_key(key: str, layout: str) -> str | None:
    """`vision_tower.vision_model.embeddings.patch_embedding.weight` -> `vision_tower:embeddings.patch_embedding.weight`."""
    if LORA_PATTERN.search(key):
        return None
    for prefix, component in _COMPONENT_ROOTS.get(layout, ()):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if component == "vision_tower" and rest.startswith("vision_model."):
                rest = rest[len("vision_model."):]
            return f"{component}:{rest}"
    return None



def strip_peft_prefix(key: str) -> str:
    """`base_model.model.model.mm_projector.0.weight` -> `model.mm_projector.0.weight` (LLaVA's builder does this)."""
    for prefix in ("base_model.model.",):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


# PEFT's wrapping of a live module tree: the `base_model.model.` level (at the root, or under XTuner's
# `llm.` / `visual_encoder.`), LoRA's `base_layer`, and `modules_to_save`'s two copies of a module.
_PEFT_ROOT = re.compile(r"(^|\.)base_model\.model\.")
_PEFT_LEVEL = re.compile(r"\.(base_layer|original_module|modules_to_save\.[^.]+)\.")


def live_key(name: str) -> str:
    """A live parameter name in the layout of the model PEFT wrapped, so the rules above apply to it:
    `base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight` -> `model.layers.0.self_attn.q_proj.weight`,
    `llm.base_model.model.model.norm.weight` (XTuner) -> `llm.model.norm.weight`; LoRA weights keep `lora_A`/`lora_B`."""
    return _PEFT_LEVEL.sub(".", _PEFT_ROOT.sub(r"\1", name))


def component_of(key: str, layout: str) -> str:
    if LORA_PATTERN.search(key):
        return "lora"
    for prefix, component in _RULES.get(layout, ()):
        if key.startswith(prefix):
            return component
    return "other"


def _any(keys: list[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def detect_layout(keys: Iterable[str], config: Mapping | None = None, filenames: Iterable[str] = ()) -> str:
    """Name the key layout of a checkpoint from its keys (and config/file names when known)."""
    keys = list(keys)
    names = {str(f).rsplit("/", 1)[-1] for f in filenames}
    if not keys:
        return "unknown"
    if _any(keys, "llm.", "visual_encoder.", "projector.model.", "projector.") and not _any(keys, "model.", "language_model."):
        return "xtuner"
    if _any(keys, "base_model.model."):
        if "non_lora_trainables.bin" in names or _any(keys, "base_model.model.model.mm_projector."):
            return "llava-original-lora"
        return "peft-adapter"
    if _any(keys, "model.multi_modal_projector.", "model.language_model.", "model.vision_tower.embeddings", "model.vision_tower.vision_model."):
        return "hf-llava-memory"
    if _any(keys, "multi_modal_projector.", "language_model.model.", "language_model.lm_head.") or (
        _any(keys, "vision_tower.") and not _any(keys, "vision_tower.vision_tower.")
    ):
        return "hf-llava-4x" if _any(keys, "vision_tower.vision_model.") else "hf-llava"
    if _any(keys, "model.mm_projector.", "model.vision_tower.vision_tower.", "model.vision_resampler.", "model.image_newline"):
        if all(k.startswith(("model.mm_projector.", "model.vision_resampler.", "model.embed_tokens.")) for k in keys) and (
            "mm_projector.bin" in names or not _any(keys, "model.layers.")
        ):
            return "llava-original-pretrain"
        return "llava-original"
    if _any(keys, "model.layers.", "model.embed_tokens.", "transformer.h.", "lm_head."):
        if config and (config.get("mm_vision_tower") or config.get("mm_hidden_size")):
            return "llava-original"
        return "llm-only"
    if _any(keys, "embeddings.patch_embedding.", "vision_model.", "encoder.layers."):
        return "vision-only"
    return "unknown"


def vision_key_style(keys: Iterable[str], layout: str) -> str | None:
    """`5.x` when the vision tower keys lack the `vision_model.` level, `4.x` when they have it, None if no tower."""
    prefix = {
        "hf-llava": "vision_tower.",
        "hf-llava-4x": "vision_tower.",
        "hf-llava-memory": "model.vision_tower.",
        "llava-original": "model.vision_tower.vision_tower.",
        "xtuner": "visual_encoder.",
    }.get(layout)
    if prefix is None:
        return None
    tower = [k[len(prefix):] for k in keys if k.startswith(prefix) and not LORA_PATTERN.search(k)]
    if not tower:
        return None
    return "4.x" if any(k.startswith("vision_model.") for k in tower) else "5.x"


def config_kind(config: Mapping | None) -> str | None:
    """Classify a config.json *before* it is ever handed to transformers.

    transformers 5 reads an original-LLaVA config (``model_type: llava`` + flat Llama fields +
    ``mm_*``) as its own LlavaConfig with 7B defaults; it must never be passed to AutoConfig.
    """
    if not config:
        return None
    archs = [str(a) for a in config.get("architectures") or []]
    if "mm_vision_tower" in config or "mm_hidden_size" in config or any(
        a.startswith("Llava") and a.endswith("ForCausalLM") for a in archs
    ):
        return "llava-original"
    model_type = config.get("model_type")
    if model_type in ("llava", "llava_next", "llava_onevision", "llava_next_video") and "text_config" in config:
        return {"llava": "hf-llava", "llava_next": "hf-llava-next"}.get(model_type, "hf-llava-onevision")
    if model_type in ("llava", "llava_next", "llava_onevision"):
        return "hf-llava" if model_type == "llava" else "hf-llava-next" if model_type == "llava_next" else "hf-llava-onevision"
    return "hf-other"


def vision_tower_unfrozen(config: Mapping | None) -> bool:
    """Whether the run's config says the vision tower was trained (LLaVA and LLaVA-NeXT flags)."""
    if not config:
        return False
    tunable = str(config.get("mm_tunable_parts") or "")
    return bool(config.get("unfreeze_mm_vision_tower")) or "mm_vision_tower" in tunable.split(",")
