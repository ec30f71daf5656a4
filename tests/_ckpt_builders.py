"""Tiny checkpoints in every on-disk layout, written the way each system writes them (no hub).

Shared by the reader tests (test_layouts, test_safetensors_reader, test_torch_reader,
test_broken_inputs). Models are built from configs: CLIP (hidden 64, 2 layers, image 32, patch 8)
+ Llama (hidden 64, 2 layers, vocab 300), as in notes/transformers_llava.md §1.1.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

VOCAB = 300
HIDDEN = 64


@lru_cache(maxsize=1)
def tiny_llava():
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    )
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=VOCAB - 1))


def save_hf_llava(directory: Path, **kwargs) -> Path:
    """transformers 5.x save_pretrained (on-disk keys `vision_tower.embeddings.*`)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    tiny_llava().save_pretrained(directory, **kwargs)
    return directory


def _parts() -> tuple[dict, dict, dict]:
    """(vision 5.x keys, projector keys linear_1/linear_2, LLM keys model.*/lm_head.*) as tensors.

    transformers 5 names the modules model.vision_tower.* / model.language_model.* / lm_head.*, 4.x
    vision_tower.vision_model.* / language_model.model.* / language_model.lm_head.*: both are read.
    """
    model = tiny_llava()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    vision, projector, llm = {}, {}, {}
    for key, value in state.items():
        for prefix, part, replacement in (
            ("model.vision_tower.", vision, ""), ("vision_tower.vision_model.", vision, ""),
            ("model.multi_modal_projector.", projector, ""), ("multi_modal_projector.", projector, ""),
            ("model.language_model.", llm, "model."), ("language_model.model.", llm, "model."),
            ("lm_head.", llm, "lm_head."), ("language_model.lm_head.", llm, "lm_head."),
        ):
            if key.startswith(prefix):
                part[replacement + key[len(prefix):]] = value
                break
    return vision, projector, llm


def hf_4x_state() -> dict:
    """transformers 4.x / llava-hf on-disk keys: `vision_tower.vision_model.*`, `language_model.model.*`."""
    vision, projector, llm = _parts()
    state = {f"vision_tower.vision_model.{k}": v for k, v in vision.items()}
    state.update({f"multi_modal_projector.{k}": v for k, v in projector.items()})
    state.update({f"language_model.{k}": v for k, v in llm.items()})
    return state


def original_projector() -> dict:
    """LLaVA's mlp2x_gelu projector keys: model.mm_projector.{0,2}.{weight,bias}."""
    _, projector, _ = _parts()
    return {f"model.mm_projector.{0 if k.startswith('linear_1') else 2}.{k.split('.')[-1]}": v for k, v in projector.items()}


def original_llava_state(*, with_tower: bool = True) -> dict:
    vision, _, llm = _parts()
    state = dict(llm)
    state.update(original_projector())
    if with_tower:
        state.update({f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in vision.items()})
    return state


def original_llava_config() -> dict:
    """config.json of haotian-liu/LLaVA: flat Llama fields + mm_* (never to be given to AutoConfig)."""
    return {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": HIDDEN,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False,
        "tune_mm_mlp_adapter": False,
    }


def lora_adapter_state(prefix: str = "base_model.model.model.") -> dict:
    import torch

    state = {}
    for i in range(2):
        for proj in ("q_proj", "v_proj"):
            state[f"{prefix}layers.{i}.self_attn.{proj}.lora_A.weight"] = torch.randn(4, HIDDEN)
            state[f"{prefix}layers.{i}.self_attn.{proj}.lora_B.weight"] = torch.zeros(HIDDEN, 4)
    return state


def adapter_config(base: str = "lmsys/vicuna-7b-v1.5") -> dict:
    return {"peft_type": "LORA", "base_model_name_or_path": base, "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}


def xtuner_state(*, with_visual_encoder: bool) -> dict:
    """XTuner LLaVAModel state dict: llm.*, projector.model.{0,2}.*, optionally visual_encoder.*."""
    vision, projector, llm = _parts()
    state = {f"llm.{k}": v for k, v in llm.items()}
    state.update({f"projector.model.{0 if k.startswith('linear_1') else 2}.{k.split('.')[-1]}": v for k, v in projector.items()})
    if with_visual_encoder:
        state.update({f"visual_encoder.vision_model.{k}": v for k, v in vision.items()})
    return state


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=2))
    return path


def save_safetensors(path: Path, state: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file(state, os.fspath(path), metadata=metadata or {"format": "pt"})
    return path


HASHED_WHOLE = 64 << 20  # larger (sparse, hostile) inputs: their first and last MiB and their extents


def _digest(path: str, size: int) -> str | None:
    import hashlib

    from llava_doctor.artifacts.holes import file_holes

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            if size <= HASHED_WHOLE:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                digest.update(fh.read(1 << 20))
                digest.update(repr(file_holes(path)).encode())
    except PermissionError:  # the permission-denied input: size/mtime/mode still compared
        return None
    return digest.hexdigest()


def snapshot(root: Path) -> dict[str, tuple]:
    """(sha256, size, mtime_ns, mode) of every regular file under root (links not followed, never a FIFO)."""
    import stat

    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                out[path] = (_digest(path, st.st_size), st.st_size, st.st_mtime_ns, st.st_mode)
            else:
                out[path] = (None, None, None, st.st_mode)
    return out
