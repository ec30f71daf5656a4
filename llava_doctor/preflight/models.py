"""What a launch's model and vision-tower folders hold, and what the codebase's builders make of them.

Pure functions over ``config.json`` dictionaries and flag values: the LLM's hidden size and family,
the tower's family (CLIP / SigLIP), width, depth and patch grid, the class
``build_vision_tower`` picks for a ``--vision_tower`` value (LLaVA-NeXT tests
``os.path.exists`` before ``"siglip" in name``, so a local SigLIP folder is built as CLIP), the
projector ``build_vision_projector`` builds for ``--mm_projector_type``, and the tensor shapes that
projector has (what ``mm_projector.load_state_dict`` will compare a ``--pretrain_mm_mlp_adapter``
against).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

# LLaVA-NeXT's SigLipVisionTower never reads the folder's config: its hidden_size is the default
# of its own SigLipVisionConfig (siglip-so400m-patch14-384), whatever the checkpoint holds.
NEXT_SIGLIP_HIDDEN = 1152
# LLM families whose activations overflow float16 (QwenLM/Qwen3#761: Qwen2 "fp16 logits contain many NaN values")
FP16_OVERFLOW = {"qwen2": "Qwen2", "qwen2_moe": "Qwen2-MoE", "llava_qwen": "Qwen2 (LLaVA-NeXT LlavaQwen)",
                 "llava_qwen_moe": "Qwen2-MoE (LLaVA-NeXT LlavaQwenMoe)"}


def llm_hidden_size(config: Mapping[str, Any] | None) -> int | None:
    if not config:
        return None
    for source in (config, config.get("text_config") or {}):
        for key in ("hidden_size", "d_model", "n_embd"):
            if isinstance(source.get(key), int):
                return source[key]
    return None


def llm_model_type(config: Mapping[str, Any] | None) -> str | None:
    if not config:
        return None
    value = config.get("model_type")
    text = (config.get("text_config") or {}).get("model_type")
    return value if value not in ("llava", "llava_next", "llava_onevision") else text or value


def fp16_overflow_family(config: Mapping[str, Any] | None, name: str, codebase: str) -> tuple[str, str] | None:
    """(family, how it was told) when the LLM is one whose float16 activations overflow."""
    model_type = llm_model_type(config)
    if model_type in FP16_OVERFLOW:
        return FP16_OVERFLOW[model_type], f"config.json model_type {model_type!r}"
    for arch in (config or {}).get("architectures") or ():
        if re.match(r"(Llava)?Qwen2", str(arch)):
            return "Qwen2", f"config.json architectures {arch!r}"
    if config is None and codebase == "llava-next" and "qwen" in name.lower() and "moe" not in name.lower():
        return "Qwen2 (LLaVA-NeXT LlavaQwen)", f"LLaVA-NeXT builds LlavaQwenForCausalLM for any name containing 'qwen' ({name})"
    return None


def is_llava_checkpoint(config: Mapping[str, Any] | None) -> bool:
    """A LLaVA checkpoint (its config names a tower): its __init__ builds the tower and projector."""
    return bool(config) and bool(config.get("mm_vision_tower"))


# ---------------------------------------------------------------------------------------------
# vision towers


def tower_facts(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """{family, model_type, hidden_size, layers, image_size, patch_size} of a CLIP/SigLIP-style folder."""
    if not config:
        return None
    model_type = str(config.get("model_type", ""))
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else config
    family = "clip" if model_type.startswith("clip") else "siglip" if model_type.startswith("siglip") else model_type or "unknown"
    return {
        "family": family,
        "model_type": model_type,
        "hidden_size": vision.get("hidden_size"),
        "layers": vision.get("num_hidden_layers"),
        "image_size": vision.get("image_size"),
        "patch_size": vision.get("patch_size"),
    }


def tower_class(codebase: str, value: str, exists: bool, *, s2: bool = False) -> tuple[str, str | None]:
    """(class name, expected folder family) that `build_vision_tower` picks; class "ValueError" when it raises."""
    if exists or value.startswith("openai") or value.startswith("laion") or "ShareGPT4V" in value:
        return ("CLIPVisionTowerS2" if s2 and codebase == "llava-next" else "CLIPVisionTower"), "clip"
    if codebase == "llava":
        return "ValueError", None
    if "siglip" in value:
        return "SigLipVisionTower", "siglip"
    if value.startswith("hf:"):
        return "HFVisionTower", None
    if value == "imagebind_huge":
        return "ImageBindWrapper", None
    if value.startswith("open_clip_hub"):
        return "OpenCLIPVisionTower", None
    if "mlcd-vit-bigG-patch14" in value:
        return "MLCDVisionTower", None
    return "ValueError", None


# classes whose load_model fills a module built by the tower itself instead of calling transformers'
# ZeRO-3-aware from_pretrained: under a partitioned model they copy into torch.Size([0]) parameters
CUSTOM_LOADERS = ("OpenCLIPVisionTower", "ImageBindWrapper")


def tower_width(codebase: str, cls: str, facts: Mapping[str, Any] | None) -> int | None:
    """The `mm_hidden_size` the training code will use for the projector's input."""
    if codebase == "llava-next" and cls == "SigLipVisionTower":
        return NEXT_SIGLIP_HIDDEN
    return facts.get("hidden_size") if facts else None


def select_layer_range(facts: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """Valid `mm_vision_select_layer` values: hidden_states has num_hidden_layers + 1 entries."""
    layers = facts.get("layers") if facts else None
    if not isinstance(layers, int):
        return None
    return -(layers + 1), layers


# ---------------------------------------------------------------------------------------------
# projectors


def projector_shapes(projector_type: str, mm_hidden: int, hidden: int) -> dict[str, tuple[int, ...]] | None:
    """State-dict shapes of `build_vision_projector` for a type; None for types it cannot shape from sizes."""
    if projector_type == "linear":
        return {"weight": (hidden, mm_hidden), "bias": (hidden,)}
    if projector_type == "identity":
        return {}
    match = re.match(r"^mlp(\d+)x(?:_res(\d+)x)?_gelu$", projector_type)
    if not match:
        return None
    depth, res = int(match.group(1)), int(match.group(2) or 0)
    shapes = {"0.weight": (hidden, mm_hidden), "0.bias": (hidden,)}
    for k in range(1, depth):
        shapes[f"{2 * k}.weight"] = (hidden, hidden)
        shapes[f"{2 * k}.bias"] = (hidden,)
    for r in range(res):
        index = 2 * depth - 1 + r
        shapes.update({f"{index}.pre_norm.weight": (hidden,), f"{index}.pre_norm.bias": (hidden,),
                       f"{index}.proj.0.weight": (hidden, hidden), f"{index}.proj.0.bias": (hidden,),
                       f"{index}.proj.2.weight": (hidden, hidden), f"{index}.proj.2.bias": (hidden,)})
    return shapes


def known_projector_type(projector_type: str, codebase: str) -> bool:
    if projector_type in ("linear", "identity") or re.match(r"^mlp\d+x_gelu$", projector_type):
        return True
    return codebase == "llava-next" and (projector_type == "pooler" or bool(re.match(r"^mlp\d+x_res\d+x_gelu$", projector_type)))


def adapter_state(shapes: Mapping[str, tuple[int, ...]], keyword: str = "mm_projector") -> dict[str, tuple[int, ...]]:
    """What `get_w(weights, "mm_projector")` hands to load_state_dict: the part of each key after `mm_projector.`."""
    return {k.split(keyword + ".", 1)[1]: v for k, v in shapes.items() if keyword + "." in k}


def load_state_dict_errors(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The lines of torch's `Error(s) in loading state_dict for ...` for a strict load (empty: it loads)."""
    lines = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing:
        lines.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
    if unexpected:
        lines.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected))
    for key, shape in expected.items():
        if key in given and tuple(given[key]) != tuple(shape):
            lines.append(f"size mismatch for {key}: copying a param with shape torch.Size({list(given[key])}) from "
                         f"checkpoint, the shape in current model is torch.Size({list(shape)})")
    return lines
