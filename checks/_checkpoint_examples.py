"""In-memory Checkpoints for the checkpoint checks' valid/invalid examples (no files, no torch)."""
from __future__ import annotations

from typing import Any, Mapping

from llava_doctor import layout as layouts
from llava_doctor.artifacts.checkpoint import Checkpoint, CheckpointFile, DeepSpeedInfo, TensorInfo

Shape = tuple[int, ...]


def checkpoint(
    tensors: Mapping[str, Shape],
    *,
    config: Mapping[str, Any] | None = None,
    dtype: str = "F16",
    file: str = "model.safetensors",
    layout: str | None = None,
    data: Mapping[str, Any] | None = None,
    files: tuple[CheckpointFile, ...] = (),
    deepspeed: DeepSpeedInfo | None = None,
    name: str = "example",
) -> Checkpoint:
    """A Checkpoint of `tensors` (name -> shape); `data` maps names to numpy arrays for deep checks."""
    config = dict(config) if config is not None else None
    chosen = layout or layouts.detect_layout(tensors, config, [file])
    infos = {
        key: TensorInfo(
            key,
            tuple(shape),
            _dtype_of(data, key, dtype),
            file,
            layouts.component_of(key, chosen),
        )
        for key, shape in tensors.items()
    }
    arrays = dict(data or {})
    return Checkpoint(
        root="/nonexistent-example",
        name=name,
        format="safetensors",
        layout=chosen,
        tensors=infos,
        config=config,
        config_kind=layouts.config_kind(config),
        files=list(files) or [CheckpointFile(file, 0, "safetensors")],
        deepspeed=deepspeed,
        loader=(lambda info: arrays[info.name]) if arrays else None,
    )


def _dtype_of(data: Mapping[str, Any] | None, key: str, default: str) -> str:
    if not data or key not in data:
        return default
    return {"float16": "F16", "float32": "F32", "float64": "F64", "int64": "I64"}[str(data[key].dtype)]


# A tiny llava-1.5-style model: CLIP tower (hidden 96, patch 4, 2 layers), mlp2x_gelu projector,
# Llama LLM (hidden 64, vocab 1000, 2 layers).
def clip_tower(prefix: str, *, vision_model: bool = False, hidden: int = 96, patch: int = 4) -> dict[str, Shape]:
    p = prefix + ("vision_model." if vision_model else "")
    out: dict[str, Shape] = {
        f"{p}embeddings.class_embedding": (hidden,),
        f"{p}embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
        f"{p}embeddings.position_embedding.weight": (65, hidden),
        f"{p}pre_layrnorm.weight": (hidden,),
        f"{p}pre_layrnorm.bias": (hidden,),
        f"{p}post_layernorm.weight": (hidden,),
        f"{p}post_layernorm.bias": (hidden,),
    }
    for i in range(2):
        layer = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{layer}self_attn.{proj}.weight"] = (hidden, hidden)
            out[f"{layer}self_attn.{proj}.bias"] = (hidden,)
        out[f"{layer}mlp.fc1.weight"] = (128, hidden)
        out[f"{layer}mlp.fc1.bias"] = (128,)
        out[f"{layer}mlp.fc2.weight"] = (hidden, 128)
        out[f"{layer}mlp.fc2.bias"] = (hidden,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[f"{layer}{norm}.weight"] = (hidden,)
            out[f"{layer}{norm}.bias"] = (hidden,)
    return out


def siglip_tower(prefix: str, *, hidden: int = 96, patch: int = 4) -> dict[str, Shape]:
    out = {
        k: v
        for k, v in clip_tower(prefix, hidden=hidden, patch=patch).items()
        if "class_embedding" not in k and "pre_layrnorm" not in k
    }
    out[f"{prefix}embeddings.patch_embedding.bias"] = (hidden,)
    out[f"{prefix}embeddings.position_embedding.weight"] = (64, hidden)
    return out


def llama(prefix: str, *, hidden: int = 64, vocab: int = 1000, lm_head: str | None = "lm_head.weight") -> dict[str, Shape]:
    out: dict[str, Shape] = {f"{prefix}embed_tokens.weight": (vocab, hidden), f"{prefix}norm.weight": (hidden,)}
    for i in range(2):
        layer = f"{prefix}layers.{i}."
        out[f"{layer}self_attn.q_proj.weight"] = (hidden, hidden)
        out[f"{layer}self_attn.k_proj.weight"] = (hidden // 2, hidden)
        out[f"{layer}self_attn.v_proj.weight"] = (hidden // 2, hidden)
        out[f"{layer}self_attn.o_proj.weight"] = (hidden, hidden)
        out[f"{layer}mlp.gate_proj.weight"] = (128, hidden)
        out[f"{layer}mlp.up_proj.weight"] = (128, hidden)
        out[f"{layer}mlp.down_proj.weight"] = (hidden, 128)
        out[f"{layer}input_layernorm.weight"] = (hidden,)
        out[f"{layer}post_attention_layernorm.weight"] = (hidden,)
    if lm_head:
        out[lm_head] = (vocab, hidden)
    return out


def hf_llava(*, vision_model: bool = False, tower: bool = True, lm_head: bool = True, vocab: int = 1000) -> dict[str, Shape]:
    """transformers on-disk keys (5.x style, or 4.x with `vision_model=True`)."""
    out: dict[str, Shape] = clip_tower("vision_tower.", vision_model=vision_model) if tower else {}
    out.update({
        "multi_modal_projector.linear_1.weight": (64, 96),
        "multi_modal_projector.linear_1.bias": (64,),
        "multi_modal_projector.linear_2.weight": (64, 64),
        "multi_modal_projector.linear_2.bias": (64,),
    })
    out.update(llama("language_model.model.", vocab=vocab, lm_head="language_model.lm_head.weight" if lm_head else None))
    return out


def hf_llava_config(*, vocab: int = 1000, vision_hidden: int = 96, tie: bool = False, family: str = "clip",
                    transformers_version: str = "5.23.0") -> dict[str, Any]:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": 999,
        "vision_feature_layer": -2,
        "tie_word_embeddings": tie,
        "transformers_version": transformers_version,
        "text_config": {
            "model_type": "llama", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": tie,
        },
        "vision_config": {
            "model_type": f"{family}_vision_model", "hidden_size": vision_hidden, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 4,
        },
    }


def original_llava(*, tower: bool = False, projector: bool = True, llm: bool = True) -> dict[str, Shape]:
    out: dict[str, Shape] = llama("model.") if llm else {}
    if projector:
        out.update({
            "model.mm_projector.0.weight": (64, 96), "model.mm_projector.0.bias": (64,),
            "model.mm_projector.2.weight": (64, 64), "model.mm_projector.2.bias": (64,),
        })
    if tower:
        out.update(clip_tower("model.vision_tower.vision_tower.", vision_model=True))
    return out


def original_llava_config(*, mm_hidden: int = 96, vision_tower: str = "openai/clip-vit-large-patch14-336",
                          **extra: Any) -> dict[str, Any]:
    config = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False,
        "mm_vision_tower": vision_tower, "mm_hidden_size": mm_hidden, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "transformers_version": "4.37.2",
    }
    config.update(extra)
    return config


def xtuner_pth(*, visual_encoder: bool, llm: bool = True) -> dict[str, Shape]:
    out: dict[str, Shape] = llama("llm.model.", lm_head="llm.lm_head.weight") if llm else {}
    out.update({
        "projector.model.0.weight": (64, 96), "projector.model.0.bias": (64,),
        "projector.model.2.weight": (64, 64), "projector.model.2.bias": (64,),
    })
    if visual_encoder:
        out.update(clip_tower("visual_encoder.", vision_model=True))
    return out


def llava_lora(*, non_lora_trainables: bool) -> dict[str, Shape]:
    """Original-LLaVA LoRA output: adapter_model (+ non_lora_trainables.bin with the projector)."""
    out: dict[str, Shape] = {}
    for i in range(2):
        for proj in ("q_proj", "v_proj"):
            out[f"base_model.model.model.layers.{i}.self_attn.{proj}.lora_A.weight"] = (8, 64)
            out[f"base_model.model.model.layers.{i}.self_attn.{proj}.lora_B.weight"] = (64, 8)
    if non_lora_trainables:
        out.update({
            "base_model.model.model.mm_projector.0.weight": (64, 96), "base_model.model.model.mm_projector.0.bias": (64,),
            "base_model.model.model.mm_projector.2.weight": (64, 64), "base_model.model.model.mm_projector.2.bias": (64,),
        })
    return out
