"""Writers that produce, from a core model, the files the real systems write (notes/transformers_llava.md §2-3).

The core model keeps the original LLaVA module tree with the running transformers' towers, so its
``state_dict()`` keys are ``model.embed_tokens.weight``, ``model.layers.{i}.*``, ``model.norm.weight``,
``lm_head.weight``, ``model.mm_projector.{0,2}.*``, ``model.vision_tower.vision_tower.<CLIP keys>``
(``vision_model.`` first under transformers 4.x, as in LLaVA's own checkpoints; not under 5.x)
and, for ``unpad`` merges, ``model.image_newline``. Each saver renames those keys to what one
system writes on disk:

- haotian-liu/LLaVA under its pinned transformers 4.37: the tower carries the 4.x ``vision_model.``
  level; pretrain stage -> ``mm_projector.bin`` only; LoRA -> PEFT adapter + ``non_lora_trainables.bin``;
- XTuner ``LLaVAModel``: ``llm.*``, ``visual_encoder.vision_model.*``, ``projector.model.*``, with
  frozen modules left out as its ``state_dict`` override does;
- transformers-native ``LlavaForConditionalGeneration.save_pretrained`` (5.x or 4.x key style);
- a ZeRO-3 partitioned model's plain ``state_dict()`` (every parameter ``torch.Size([0])``) and the
  gathered save that fixes it.

The key renamings are pure functions over names; torch/transformers are imported inside functions.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..layout import LORA_PATTERN

CORE_TOWER = "model.vision_tower.vision_tower."
CORE_PROJECTOR = "model.mm_projector."
CORE_NEWLINE = "model.image_newline"
LEGACY_TRANSFORMERS_VERSION = "4.37.2"  # haotian-liu/LLaVA's pin (pyproject.toml)
SAFETENSORS_METADATA = {"format": "pt"}
# LLaVA's find_all_linear_names: every nn.Linear except these gets a LoRA adapter.
_LORA_EXCLUDED = ("mm_projector", "vision_tower", "vision_resampler", "lm_head")


# --------------------------------------------------------------------------- key renamings (pure)


def with_vision_model_level(tower_key: str) -> str:
    """CLIP/SigLIP 5.x key (``embeddings.…``) -> 4.x key (``vision_model.embeddings.…``); idempotent."""
    return tower_key if tower_key.startswith("vision_model.") else f"vision_model.{tower_key}"


def without_vision_model_level(tower_key: str) -> str:
    return tower_key[len("vision_model."):] if tower_key.startswith("vision_model.") else tower_key


@functools.lru_cache(maxsize=None)
def towers_have_vision_model_level() -> bool:
    """Whether the running transformers' CLIPVisionModel / SiglipVisionModel keep the ``vision_model`` submodule
    (4.x does; 5.x dropped it)."""
    from .builder import transformers_major

    return transformers_major() < 5


def running_tower_key(tower_key: str) -> str:
    """A CLIP/SigLIP key in either style, as the running transformers' tower names it."""
    return with_vision_model_level(tower_key) if towers_have_vision_model_level() else without_vision_model_level(tower_key)


def llava_original_key(key: str) -> str:
    """Core key -> the key haotian-liu/LLaVA writes under transformers 4.37 (tower gains ``vision_model.``)."""
    if key.startswith(CORE_TOWER):
        return CORE_TOWER + with_vision_model_level(key[len(CORE_TOWER):])
    return key


def core_key(original_key: str) -> str:
    """Inverse of `llava_original_key`: the key as the core model (the running transformers' tower) names it."""
    if original_key.startswith(CORE_TOWER):
        return CORE_TOWER + running_tower_key(original_key[len(CORE_TOWER):])
    return original_key


def xtuner_key(key: str) -> str | None:
    """Core key -> XTuner LLaVAModel key, or None for what LLaVAModel has no place for (image_newline)."""
    if key.startswith(CORE_TOWER):
        return "visual_encoder." + with_vision_model_level(key[len(CORE_TOWER):])
    if key.startswith(CORE_PROJECTOR):
        return "projector.model." + key[len(CORE_PROJECTOR):]
    if key.startswith("lm_head."):
        return "llm." + key
    if key.startswith(CORE_NEWLINE) or key.startswith("model.vision_resampler."):
        return None
    if key.startswith("model."):
        return "llm." + key
    return None


def core_key_from_xtuner(key: str) -> str | None:
    """Inverse of `xtuner_key` for full (non-LoRA) keys."""
    for prefix, core in (("visual_encoder.", CORE_TOWER), ("projector.model.", CORE_PROJECTOR), ("llm.", "")):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            return core + (running_tower_key(rest) if prefix == "visual_encoder." else rest)
    return None


def hf_memory_key(key: str) -> str | None:
    """Core key -> transformers 5.x in-memory ``LlavaForConditionalGeneration`` key (None: no place for it)."""
    if key.startswith(CORE_TOWER):
        return "model.vision_tower." + without_vision_model_level(key[len(CORE_TOWER):])
    if key.startswith(CORE_PROJECTOR):
        index, _, rest = key[len(CORE_PROJECTOR):].partition(".")
        linear = {"0": "linear_1", "2": "linear_2"}.get(index)
        return f"model.multi_modal_projector.{linear}.{rest}" if linear else None
    if key.startswith("lm_head."):
        return key
    if key.startswith(CORE_NEWLINE):
        return None
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return None


def hf_memory_key_4x(key: str) -> str | None:
    """Core key -> transformers 4.x in-memory ``LlavaForConditionalGeneration`` key (4.x saves it as it is)."""
    memory = hf_memory_key(key)
    if memory is None:
        return None
    for five, four in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                       ("model.", "")):
        if memory.startswith(five):
            return hf_disk_key_to_4x(four + memory[len(five):])
    return memory


def hf_memory_mapping(hf_model: Any) -> Callable[[str], str | None]:
    """`hf_memory_key` for a transformers 5 ``Llava*ForConditionalGeneration`` (its parts under ``model.``),
    `hf_memory_key_4x` for a 4.x one (its parts at the top)."""
    return hf_memory_key if any(k.startswith("model.") for k in hf_model.state_dict()) else hf_memory_key_4x


def hf_disk_key_to_4x(key: str) -> str:
    """transformers 5.x on-disk key -> the 4.x (llava-hf legacy) spelling: the tower regains ``vision_model.``."""
    if key.startswith("vision_tower."):
        return "vision_tower." + with_vision_model_level(key[len("vision_tower."):])
    return key


def hf_disk_key_to_5x(key: str) -> str:
    """Inverse of `hf_disk_key_to_4x`: the tower loses ``vision_model.``."""
    if key.startswith("vision_tower."):
        return "vision_tower." + without_vision_model_level(key[len("vision_tower."):])
    return key


def rename(state: Mapping[str, Any], mapping: Callable[[str], str | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = mapping(key)
        if new is None:
            continue
        if new in out:
            raise ValueError(f"two keys map to {new!r}")
        out[new] = value
    return out


def xtuner_state_dict(state: Mapping[str, Any], *, freeze_llm: bool, freeze_visual_encoder: bool) -> dict[str, Any]:
    """What XTuner's ``LLaVAModel.state_dict()`` returns: frozen llm / visual_encoder left out, projector always."""
    out = {}
    for key, value in rename(state, xtuner_key).items():
        if key.startswith("visual_encoder.") and freeze_visual_encoder:
            continue
        if key.startswith("llm.") and freeze_llm:
            continue
        out[key] = value
    return out


# --------------------------------------------------------------------------- adapters to a model


def model_state(model: Any) -> dict[str, Any]:
    """The state dict of a model, a DeepSpeed engine (its ``.module``) or a mapping already."""
    if isinstance(model, Mapping):
        return dict(model)
    module = getattr(model, "module", model)
    return dict(module.state_dict())


def config_dict(model: Any, config: Any = None) -> dict[str, Any]:
    """The model's config as a JSON-able dict (a PretrainedConfig, a dict, or ``model.config``)."""
    config = config if config is not None else getattr(getattr(model, "module", model), "config", None)
    if config is None:
        raise ValueError("no config: pass a model with .config or config=")
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config), default=str))
    out = json.loads(config.to_json_string())  # use_diff, as save_pretrained writes it
    dtype = _parameter_dtype(model)
    if dtype:  # like save_pretrained: the weights' dtype, whatever the config said before a .to()
        out.pop("torch_dtype", None)
        out["dtype"] = dtype
    return out


def _parameter_dtype(model: Any) -> str | None:
    module = getattr(model, "module", model)
    params = getattr(module, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return str(first.dtype).replace("torch.", "") if first is not None else None


def legacy_config(config: Mapping[str, Any], *, architecture: str | None = None) -> dict[str, Any]:
    """A config.json as transformers 4.37 writes it (``torch_dtype``, its version)."""
    out = dict(config)
    if "dtype" in out:
        out.setdefault("torch_dtype", out.pop("dtype"))
    out["transformers_version"] = LEGACY_TRANSFORMERS_VERSION
    if architecture:
        out["architectures"] = [architecture]
    return out


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def detached(state: Mapping[str, Any]) -> dict[str, Any]:
    """Independent contiguous CPU copies (safetensors refuses shared storage; a tied lm_head shares it)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def write_tensors(state: Mapping[str, Any], path: str | os.PathLike, *, safe: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = detached(state)
    if safe:
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata=dict(SAFETENSORS_METADATA))
    else:
        import torch

        torch.save(tensors, path)
    return path


def _drop_tied_head(state: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """HF ``save_pretrained`` leaves a tied ``lm_head.weight`` out of the file."""
    if config.get("tie_word_embeddings") and "lm_head.weight" in state:
        state = dict(state)
        state.pop("lm_head.weight")
    return state


# --------------------------------------------------------------------------- original LLaVA


def save_llava_original(model: Any, out_dir: str | os.PathLike, *, stage: str = "finetune", safe: bool = True,
                        config: Any = None, include_vision_tower: bool = True) -> Path:
    """Write a directory as haotian-liu/LLaVA's trainer writes it for `stage` (finetune | pretrain | lora).

    - finetune: ``config.json`` + ``model.safetensors`` (``safe``) or ``pytorch_model.bin``; the whole
      state dict, tower keys with the 4.x ``vision_model.`` level (``include_vision_tower=False`` leaves the
      frozen tower out, as exports that rebuild it from ``mm_vision_tower`` do).
    - pretrain (``tune_mm_mlp_adapter``): ``config.json`` + ``mm_projector.bin`` holding only
      ``model.mm_projector.*``; no LLM weights (LLaVA's ``_save`` is a no-op in that stage).
    - lora: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT), ``non_lora_trainables.bin``
      (the trainable non-LoRA parameters, ``base_model.model.model.mm_projector.*``) and ``config.json``.
      A model that is not yet a PeftModel is wrapped the way LLaVA's train.py does (LoRA on every LLM
      Linear; projector trainable).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if stage == "lora":
        return _save_llava_lora(model, out, config=config)
    cfg = write_llava_config(model, out, config=config)
    state = model_state(model)
    if stage == "pretrain":
        projector = {k: v for k, v in state.items() if k.startswith(CORE_PROJECTOR)}
        if not projector:
            raise ValueError("the model has no model.mm_projector.* parameters")
        write_tensors(projector, out / "mm_projector.bin", safe=False)
        return out
    if stage != "finetune":
        raise ValueError(f"unknown stage {stage!r} (expected finetune, pretrain or lora)")
    if not include_vision_tower:
        state = {k: v for k, v in state.items() if not k.startswith(CORE_TOWER)}
    state = _drop_tied_head(rename(state, llava_original_key), cfg)
    write_tensors(state, out / ("model.safetensors" if safe else "pytorch_model.bin"), safe=safe)
    return out


def write_llava_config(model: Any, out_dir: str | os.PathLike, *, config: Any = None) -> dict[str, Any]:
    """``config.json`` as LLaVA's trainer writes it beside the weights (transformers 4.37 spelling); returns it."""
    cfg = config_dict(model, config)
    archs = cfg.get("architectures") or [type(getattr(model, "module", model)).__name__]
    cfg = legacy_config(cfg, architecture=archs[0])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "config.json", cfg)
    return cfg


def llava_lora_targets(model: Any) -> list[str]:
    """LLaVA's find_all_linear_names: the last name part of every LLM nn.Linear."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(part in name for part in _LORA_EXCLUDED):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def wrap_lora(model: Any, *, r: int = 8, alpha: int = 16) -> Any:
    """Wrap a core model with PEFT LoRA as LLaVA's train.py does (projector kept trainable)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, target_modules=llava_lora_targets(model), lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, lora)
    for name, param in wrapped.named_parameters():
        if "mm_projector" in name:
            param.requires_grad_(True)
    return wrapped


def _save_llava_lora(model: Any, out: Path, *, config: Any) -> Path:
    from peft import PeftModel

    peft_model = model if isinstance(model, PeftModel) else wrap_lora(model)
    base = peft_model.get_base_model()
    write_llava_config(base, out, config=config)
    # LLaVA: get_peft_state_maybe_zero_3(named_parameters, bias="none") -> model.save_pretrained(state_dict=...);
    # the names keep their adapter (`.default.`), which save_pretrained strips (peft 0.10 keeps only keys naming it)
    adapter_state = {name: p.detach() for name, p in peft_model.named_parameters() if "lora_" in name}
    peft_model.save_pretrained(str(out), state_dict=adapter_state, safe_serialization=True)
    # LLaVA: get_peft_state_non_lora_maybe_zero_3(named_parameters, require_grad_only=True)
    non_lora = {name: p for name, p in peft_model.named_parameters() if "lora_" not in name and p.requires_grad}
    write_tensors(non_lora, out / "non_lora_trainables.bin", safe=False)
    return out


# --------------------------------------------------------------------------- XTuner


def save_xtuner_pth(model: Any, path: str | os.PathLike, *, freeze_llm: bool, freeze_visual_encoder: bool,
                    complete: bool = False, iteration: int = 0) -> Path:
    """An XTuner/mmengine ``iter_N.pth``: ``{"meta": {...}, "state_dict": LLaVAModel.state_dict()}``.

    Frozen modules are left out as XTuner's ``LLaVAModel.state_dict`` override does; for a PEFT-wrapped
    model (``llm_lora``) the LLM contributes only its LoRA tensors, adapter name kept
    (``llm.base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.default.weight``). ``complete=True``
    keeps the frozen encoder's base weights (the maintainer's workaround in InternLM/xtuner#827 of
    forcing ``need_visual_encoder=True``). Only tensors and plain containers: loads with weights_only=True.
    """
    import torch

    raw = model_state(model)
    if hasattr(model, "peft_config"):  # llm_lora: XTuner saves the LLM's LoRA state, never its base weights
        lora = {f"llm.{k}": v for k, v in raw.items() if LORA_PATTERN.search(k) and CORE_TOWER not in k}
        base = {_without_peft(k): v for k, v in raw.items() if not LORA_PATTERN.search(k)}
        state = {**xtuner_state_dict(base, freeze_llm=True, freeze_visual_encoder=freeze_visual_encoder and not complete),
                 **lora}
    else:
        state = xtuner_state_dict(raw, freeze_llm=freeze_llm, freeze_visual_encoder=freeze_visual_encoder and not complete)
    meta = {"iter": int(iteration), "epoch": 0, "mmengine_version": "0.10.3", "xtuner_version": "0.1.23",
            "freeze_llm": bool(freeze_llm), "freeze_visual_encoder": bool(freeze_visual_encoder)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "state_dict": detached(state)}, path)
    return path


def _without_peft(key: str) -> str:
    """``base_model.model.<key>`` with ``.base_layer`` -> the plain core key."""
    key = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
    return key.replace(".base_layer.", ".")


# --------------------------------------------------------------------------- transformers-native


def hf_llava_config(core_config: Mapping[str, Any], vision_config: Mapping[str, Any], *, image_token_index: int) -> Any:
    """A transformers ``LlavaConfig`` from an original-LLaVA config (flat LLM fields + mm_*) and the tower's config."""
    from transformers import AutoConfig, LlavaConfig

    if core_config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ValueError(f"LlavaForConditionalGeneration has an mlp2x_gelu projector; got {core_config.get('mm_projector_type')!r}")
    text_type = core_config.get("text_model_type") or _text_model_type(core_config)
    text_fields = {k: v for k, v in core_config.items() if not k.startswith("mm_") and k not in _NON_TEXT_FIELDS}
    text_config = AutoConfig.for_model(text_type, **text_fields)
    vision_fields = {k: v for k, v in vision_config.items() if k not in _NON_TEXT_FIELDS}
    vision_type = vision_config.get("model_type", "clip_vision_model")
    vision = AutoConfig.for_model(vision_type, **vision_fields)
    select = core_config.get("mm_vision_select_feature", "patch")
    patches = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(
        image_seq_length=patches if select == "patch" else patches + 1,
        vision_config=vision,
        text_config=text_config,
        image_token_index=image_token_index,
        projector_hidden_act="gelu",
        vision_feature_layer=core_config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        tie_word_embeddings=bool(core_config.get("tie_word_embeddings", False)),
    )


_NON_TEXT_FIELDS = frozenset({
    "architectures", "model_type", "transformers_version", "auto_map", "_name_or_path", "dtype", "torch_dtype",
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "use_mm_proj", "delay_load",
    "text_model_type", "image_token_index", "image_token_id", "vision_config", "text_config",
})


def _text_model_type(core_config: Mapping[str, Any]) -> str:
    archs = " ".join(core_config.get("architectures") or []) + " " + str(core_config.get("model_type", ""))
    return "qwen2" if "qwen" in archs.lower() else "llama"


def save_hf_native(model: Any, out_dir: str | os.PathLike, *, key_style: str | None = None, config: Any = None,
                   vision_config: Any = None, image_token_index: int | None = None) -> Path:
    """Copy a core model into transformers' ``LlavaForConditionalGeneration`` and ``save_pretrained`` it.

    ``mm_projector.0/2 -> multi_modal_projector.linear_1/2``, LLM, lm_head and tower copied bit for bit.
    The file has the keys the running transformers writes unless ``key_style`` names one: ``"4.x"`` the 4.x
    on-disk spelling (``vision_tower.vision_model.*``, the layout transformers <4.52 and llava-hf's legacy
    checkpoints use; config.json as 4.37 writes it), ``"5.x"`` transformers 5's (``vision_tower.*``).
    """
    if key_style not in (None, "5.x", "4.x"):
        raise ValueError(f"key_style must be '5.x' or '4.x', not {key_style!r}")
    from transformers import LlavaForConditionalGeneration

    module = getattr(model, "module", model)
    cfg = config_dict(module, config)
    vision = _vision_config_dict(module, vision_config)
    if image_token_index is None:
        image_token_index = _image_token_index(module, cfg)
    hf_config = hf_llava_config(cfg, vision, image_token_index=image_token_index)
    state = model_state(module)
    if any(k.startswith(CORE_NEWLINE) for k in state):
        raise ValueError("model.image_newline has no place in LlavaForConditionalGeneration (LLaVA-NeXT layout)")
    hf_model = LlavaForConditionalGeneration(hf_config)
    mapping = hf_memory_mapping(hf_model)
    mapped = rename(state, mapping)
    if hf_config.tie_word_embeddings:
        mapped.pop("lm_head.weight", None)
    dtype = next(iter(mapped.values())).dtype
    hf_model.to(dtype)
    missing, unexpected = hf_model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not (hf_config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"core -> LlavaForConditionalGeneration: missing {missing[:3]}, unexpected {unexpected[:3]}")
    out = Path(out_dir)
    hf_model.save_pretrained(str(out))
    if key_style == "4.x":
        _rewrite_safetensors_keys(out / "model.safetensors", hf_disk_key_to_4x)
        config_path = out / "config.json"
        write_json(config_path, legacy_config(json.loads(config_path.read_text())))
    elif key_style == "5.x" and mapping is hf_memory_key_4x:
        _rewrite_safetensors_keys(out / "model.safetensors", hf_disk_key_to_5x)
    return out


def _vision_config_dict(module: Any, vision_config: Any) -> dict[str, Any]:
    if vision_config is None:
        tower = module.get_vision_tower() if hasattr(module, "get_vision_tower") else None
        inner = getattr(tower, "vision_tower", None)
        vision_config = getattr(inner, "config", None) or getattr(tower, "config", None)
    if vision_config is None:
        raise ValueError("no vision config: pass vision_config= (the tower is not loaded)")
    return config_dict(None, vision_config)


def _image_token_index(module: Any, cfg: Mapping[str, Any]) -> int:
    for name in ("image_token_index", "image_token_id"):
        if cfg.get(name) is not None:
            return int(cfg[name])
        value = getattr(module, name, None)
        if value is not None:
            return int(value)
    raise ValueError("no image token id: pass image_token_index=")


def _rewrite_safetensors_keys(path: Path, mapping: Callable[[str], str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or dict(SAFETENSORS_METADATA)
        tensors = {mapping(k): f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=metadata)


# --------------------------------------------------------------------------- ZeRO-3


def save_unguarded_zero3(model_or_state_dict: Any, path: str | os.PathLike) -> Path:
    """The bug: a ZeRO-3 partitioned model's plain ``state_dict()`` to safetensors, no gather.

    Every partitioned parameter is saved as ``torch.Size([0])`` (safetensors ``data_offsets [k, k]``).
    Keys are written as original LLaVA names them.
    """
    state = rename(model_state(model_or_state_dict), llava_original_key)
    if _rank() != 0:
        return Path(path)
    return write_tensors(state, path, safe=True)


def save_gathered_zero3(model: Any, path: str | os.PathLike) -> Path:
    """The fix: gather every partitioned parameter (``deepspeed.zero.GatheredParameters``) before saving.

    LLaVA's own ``maybe_zero_3`` pattern; on a model that is not partitioned it is a plain save.
    """
    import deepspeed

    module = getattr(model, "module", model)
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):  # a collective: every rank takes part
        state = detached(module.state_dict())
    if _rank() != 0:
        return Path(path)
    state = rename(state, llava_original_key)
    return write_tensors(state, path, safe=True)


def _rank() -> int:
    """This process's rank when torch.distributed is initialised (savers write on rank 0 only), else 0."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
