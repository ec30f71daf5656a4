"""What the original LLaVA / LLaVA-NeXT loader does with the vision tower of a checkpoint, from its config alone.

Pure functions over ``config.json`` (and the folder's name, which LLaVA-NeXT's builder reads);
nothing is loaded. The code behind each rule (haotian-liu/LLaVA @c121f04, LLaVA-VL/LLaVA-NeXT
@df17966; measured in notes/transformers_llava.md §2.4):

* ``LlavaMetaModel.__init__`` builds the tower with ``delay_load=True`` in LLaVA (hard-coded) and
  ``delay_load=getattr(config, "delay_load", False)`` in LLaVA-NeXT, whose builder sets it only for
  model names containing "v1.5" ("a workaround for correctly loading v1.5 models").
* The tower then loads itself at once (``load_model()`` in its ``__init__``) when not delay-loaded,
  and also when ``unfreeze_mm_vision_tower`` is set (both) or ``mm_vision_tower`` is in
  ``mm_tunable_parts`` (LLaVA-NeXT).
* That eager load runs inside ``from_pretrained(..., low_cpu_mem_usage=True)``, on the meta
  device: it loads nothing, the tower says ``is_loaded``, and the builder's later
  ``if not vision_tower.is_loaded: vision_tower.load_model()`` skips it. The tower keeps what the
  checkpoint holds for it; with no tower weights in the checkpoint it is uninitialised memory
  under transformers 4.37 (measured mean -inf; LLaVA-VL/LLaVA-NeXT#285, '!!!!' outputs) or random
  under transformers 5.
* A delay-loaded tower is built by ``load_model()`` from ``mm_vision_tower`` after the weights:
  tower weights in the checkpoint are discarded as unexpected, and the base encoder is used.
  ``build_vision_tower`` accepts a path that exists on the loading machine or a name starting with
  ``openai``/``laion`` or containing ``ShareGPT4V`` (LLaVA-NeXT also: ``siglip``, ``hf:``,
  ``open_clip_hub``, ``mlcd-vit-bigG-patch14``, ``imagebind_huge``), else it raises
  ``ValueError: Unknown vision tower: <name>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from .stages import parse_tunable_parts, truthy

# config.json keys that only LLaVA-NeXT's train.py writes, and its model classes
NEXT_CONFIG_KEYS = frozenset({
    "mm_newline_position", "mm_spatial_pool_stride", "mm_spatial_pool_mode", "vision_tower_pretrained",
    "add_faster_video", "faster_token_stride", "force_sample", "add_time_instruction", "image_crop_resolution",
    "image_split_resolution", "tune_mm_vision_resampler", "mm_tunable_parts", "mm_resampler_type", "delay_load",
})
NEXT_ARCHITECTURES = frozenset({
    "LlavaQwenForCausalLM", "LlavaQwenMoeForCausalLM", "LlavaGemmaForCausalLM", "LlavaMixtralForCausalLM",
})
_NEXT_TOWER_NAMES = ("siglip", "hf:", "open_clip_hub", "mlcd-vit-bigG-patch14", "imagebind_huge")


@dataclass(frozen=True)
class TowerLoad:
    """How the loader a config implies builds the vision tower."""

    codebase: str  # "LLaVA" (haotian-liu) or "LLaVA-NeXT"
    eager: bool  # the tower loads itself inside from_pretrained (not delay-loaded)
    why: str  # the config fields (or defaults) that decide `eager`, in their own names
    reference: str | None  # mm_vision_tower
    resolves: str  # "local" (a folder here), "hub" (a name the builder accepts, fetched at load) or "unknown"

    def outcome(self, has_tower_weights: bool) -> str:
        """What the model's tower holds after LLaVA's builder loaded the checkpoint."""
        if self.eager:
            return "checkpoint" if has_tower_weights else "uninitialised"
        return "base" if self.resolves != "unknown" else "error"


def loader_model_name(folder: str) -> str:
    """The name LLaVA's get_model_name_from_path gives a checkpoint folder (LLaVA-NeXT's builder tests it for v1.5)."""
    parts = os.path.normpath(folder).split(os.sep)
    return f"{parts[-2]}_{parts[-1]}" if parts[-1].startswith("checkpoint-") and len(parts) > 1 else parts[-1]


def codebase(config: Mapping[str, Any]) -> str:
    archs = {str(a) for a in config.get("architectures") or []}
    return "LLaVA-NeXT" if archs & NEXT_ARCHITECTURES or NEXT_CONFIG_KEYS & set(config) else "LLaVA"


def resolves(reference: Any, root: str | None, code: str) -> str:
    """How LLaVA's build_vision_tower would take `reference` on this machine."""
    if not isinstance(reference, str) or not reference:
        return "unknown"
    candidates = [reference] if os.path.isabs(reference) else [reference] + ([os.path.join(root, reference)] if root else [])
    if any(os.path.exists(path) for path in candidates):
        return "local"
    if reference.startswith(("openai", "laion")) or "ShareGPT4V" in reference:
        return "hub"
    if code == "LLaVA-NeXT" and (any(mark in reference for mark in _NEXT_TOWER_NAMES) or reference.startswith("hf:")):
        return "hub"
    return "unknown"


def tower_load(config: Mapping[str, Any] | None, *, root: str | None = None, model_name: str | None = None) -> TowerLoad | None:
    """The loader's plan for the tower of an original-LLaVA / LLaVA-NeXT config; None without `mm_vision_tower`.

    `root` is the checkpoint folder (references resolve against it; its name is the model name unless
    `model_name` is given).
    """
    if not config or not (config.get("mm_vision_tower") or config.get("vision_tower")):
        return None
    if model_name is None and root:
        model_name = loader_model_name(root)
    code = codebase(config)
    reference = config.get("mm_vision_tower") or config.get("vision_tower")
    reference = reference if isinstance(reference, str) else None
    tunable = parse_tunable_parts(config.get("mm_tunable_parts")) or ()
    if truthy(config.get("unfreeze_mm_vision_tower")):
        eager, why = True, "unfreeze_mm_vision_tower is true"
    elif code == "LLaVA-NeXT" and "mm_vision_tower" in tunable:
        eager, why = True, "mm_tunable_parts holds mm_vision_tower"
    elif code == "LLaVA":
        eager, why = False, "LLaVA always delay-loads a frozen tower"
    elif truthy(config.get("delay_load")):
        eager, why = False, "delay_load is true"
    elif model_name and "v1.5" in model_name.lower():
        eager, why = False, f"the builder delay-loads models named like v1.5 ({model_name})"
    else:
        eager, why = True, ("delay_load is false" if "delay_load" in config else "delay_load is unset (LLaVA-NeXT's default: false)")
    return TowerLoad(code, eager, why, reference, resolves(reference, root, code))
