"""Tiny original-LLaVA-style configs that build in milliseconds.

``LlavaLlamaConfig`` (``model_type: llava_llama``) and ``LlavaQwenConfig`` (``llava_qwen``) are
the flat LLM config plus LLaVA's ``mm_*`` fields, so ``config.json`` written by
``save_pretrained`` looks like one from haotian-liu/LLaVA or LLaVA-NeXT.

The vision tower a config names (``mm_vision_tower``) is a LOCAL folder holding a saved base
tower (config.json + model.safetensors) written by ``vision.build_base_vision_tower``;
``prepare_vision_tower(root, vision)`` writes one on demand.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config, SiglipVisionConfig

LLMS = ("llama", "qwen2")
VISIONS = ("clip", "siglip")
DEFAULT_SEED = 0


class LlavaLlamaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaQwenConfig(Qwen2Config):
    model_type = "llava_qwen"


LlavaQwen2Config = LlavaQwenConfig


def bundled_vocab() -> tuple[int, int]:
    """(vocabulary size, `<image>` id) of the shipped tokenizer, read from tokenizer.json alone."""
    from .tokenizer import tokenizer_dir

    data = json.loads((tokenizer_dir() / "tokenizer.json").read_text())
    ids = set(data["model"]["vocab"].values()) | {token["id"] for token in data.get("added_tokens", [])}
    image_id = next(token["id"] for token in data["added_tokens"] if token["content"] == "<image>")
    return max(ids) + 1, image_id


def tiny_vision_config(vision: str = "clip", *, hidden_size: int = 64, num_layers: int = 2, image_size: int = 32, patch_size: int = 8):
    """A CLIP or SigLIP vision config: 2 layers, 4 heads, 32x32 images, (32/patch)^2 patches."""
    common = dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
    )
    if vision == "clip":
        return CLIPVisionConfig(projection_dim=hidden_size, **common)
    if vision == "siglip":
        return SiglipVisionConfig(vision_use_head=False, **common)
    raise ValueError(f"unknown vision tower kind {vision!r}; known: {', '.join(VISIONS)}")


DEFAULT_PRETRAIN_STEPS = 300


def cache_root() -> Path:
    """The core's cache (base towers, the healthy model): $LLAVA_DOCTOR_CACHE, else $XDG_CACHE_HOME/llava-doctor."""
    root = os.environ.get("LLAVA_DOCTOR_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava-doctor"


def default_tower_root() -> Path:
    return cache_root() / "towers"


def prepare_vision_tower(
    root: str | Path | None = None, vision: str = "clip", seed: int = DEFAULT_SEED, pretrain_steps: int = DEFAULT_PRETRAIN_STEPS, **vision_kwargs
) -> Path:
    """Write (once) a seeded base tower under `root` (default: the cache) and return its folder, for `mm_vision_tower`.

    `pretrain_steps=0` gives a random tower in milliseconds (enough for structure tests); the default
    pretrained one (~10 s once) is what a model needs to learn to name shapes.
    """
    from .vision import build_base_vision_tower

    suffix = "".join(f"-{k}{v}" for k, v in sorted(vision_kwargs.items()))
    folder = Path(root or default_tower_root()) / f"base-{vision}-seed{seed}-pre{pretrain_steps}{suffix}"
    if not (folder / "model.safetensors").is_file():
        build_base_vision_tower(folder, tiny_vision_config(vision, **vision_kwargs), seed=seed, pretrain_steps=pretrain_steps)
    return folder


def tiny_config(
    llm: str = "llama",
    vision: str = "clip",
    projector: str = "mlp2x_gelu",
    *,
    vision_tower: str | Path | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int | None = None,
    image_token_index: int | None = None,
    mm_vision_select_layer: int = -2,
    mm_vision_select_feature: str = "patch",
    mm_patch_merge_type: str = "flat",
    tune_mm_mlp_adapter: bool = False,
    unfreeze_mm_vision_tower: bool = False,
    delay_load: bool = False,
    tie_word_embeddings: bool = False,
    tokenizer_model_max_length: int = 256,
    vision_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
):
    """An original-LLaVA config (LlavaLlamaConfig / LlavaQwenConfig) for the tiny model.

    `vision_tower` is the local folder of the base tower (see `prepare_vision_tower`); the vision
    config itself is read from there when it exists so mm_hidden_size always matches it.
    """
    if llm not in LLMS:
        raise ValueError(f"unknown LLM kind {llm!r}; known: {', '.join(LLMS)}")
    default_vocab, default_image_id = bundled_vocab() if vocab_size is None or image_token_index is None else (0, 0)
    vision_config = tiny_vision_config(vision, **(vision_kwargs or {}))
    if vision_tower is not None and (Path(vision_tower) / "config.json").is_file():
        vision_config = json.loads((Path(vision_tower) / "config.json").read_text())
        mm_hidden_size = vision_config["hidden_size"]
    else:
        mm_hidden_size = vision_config.hidden_size
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size or default_vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=tie_word_embeddings,
        # the mm_* fields of haotian-liu/LLaVA's ModelArguments/DataArguments as saved in config.json
        mm_vision_tower=str(vision_tower) if vision_tower is not None else None,
        mm_hidden_size=mm_hidden_size,
        mm_projector_type=projector,
        mm_vision_select_layer=mm_vision_select_layer,
        mm_vision_select_feature=mm_vision_select_feature,
        mm_patch_merge_type=mm_patch_merge_type,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        mm_projector_lr=None,
        image_aspect_ratio="square",
        tune_mm_mlp_adapter=tune_mm_mlp_adapter,
        freeze_mm_mlp_adapter=False,
        unfreeze_mm_vision_tower=unfreeze_mm_vision_tower,
        use_mm_proj=True,
        image_token_index=image_token_index if image_token_index is not None else default_image_id,
        delay_load=delay_load,
        tokenizer_model_max_length=tokenizer_model_max_length,
        tokenizer_padding_side="right",
    )
    fields.update(overrides)
    if llm == "llama":
        return LlavaLlamaConfig(architectures=["LlavaLlamaForCausalLM"], **fields)
    return LlavaQwenConfig(architectures=["LlavaQwenForCausalLM"], use_sliding_window=False, **fields)
