"""The stage policy: which components a LLaVA training stage trains, and the stage a run's flags imply.

One policy for every consumer: the checkpoint comparisons (LD302/LD303), the live checks (LD301),
``preflight`` (from a launch command's flags) and the bundled core's ``apply_stage``. Pure
functions over flags; no torch.

==========  ==============  =========  ==============  =======  ======================================
stage       vision_tower    projector  language_model  lm_head  as in haotian-liu/LLaVA train.py
==========  ==============  =========  ==============  =======  ======================================
pretrain    frozen          trained    frozen          frozen   ``tune_mm_mlp_adapter``
finetune    frozen (*)      trained    trained         trained  full fine-tune
lora        frozen (*)      trained    LoRA only       frozen   ``lora_enable`` (peft)
==========  ==============  =========  ==============  =======  ======================================

(*) trained with ``unfreeze_mm_vision_tower`` or ``mm_vision_tower`` in LLaVA-NeXT's
``mm_tunable_parts``. ``freeze_mm_mlp_adapter`` freezes the projector. ``image_newline``, when
the model has one, follows the projector. LLaVA-NeXT's ``mm_tunable_parts`` (comma-separated
``mm_mlp_adapter``, ``mm_vision_resampler``, ``mm_vision_tower``, ``mm_language_model``) replaces
the stage flags when present: only the listed parts train, and with ``lora_enable`` the language
model trains through its LoRA adapters only (LLaVA-NeXT after bfbba5a; before it the whole LLM
trained, LLaVA-VL/LLaVA-NeXT#508).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

STAGES = ("pretrain", "finetune", "lora")
# components a policy speaks about; "lora" is the LoRA adapters themselves
POLICY_COMPONENTS = ("vision_tower", "projector", "image_newline", "language_model", "lm_head", "lora")
TUNABLE_PARTS = ("mm_mlp_adapter", "mm_vision_resampler", "mm_vision_tower", "mm_language_model")

STAGE_PURPOSE = {
    "pretrain": "stage pretrain trains only the projector",
    "finetune": "stage finetune trains the projector and the language model",
    "lora": "stage lora trains the LoRA adapters and the projector, with the base language model frozen",
}


def truthy(value: Any) -> bool:
    """A training flag's value from a config or a launch: a bool, or a string such as "True" / "1"."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


def parse_tunable_parts(value: Any) -> tuple[str, ...] | None:
    """`"mm_vision_tower,mm_mlp_adapter"` -> ('mm_vision_tower', 'mm_mlp_adapter'); None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [str(v).strip() for v in value]
    else:
        parts = [p.strip() for p in str(value).split(",")]
    parts = [p for p in parts if p]
    return tuple(parts) or None


@dataclass(frozen=True)
class TrainingFlags:
    """The flags of LLaVA / LLaVA-NeXT train.py that decide what trains (as saved in config.json or given at launch)."""

    tune_mm_mlp_adapter: bool = False
    freeze_mm_mlp_adapter: bool = False
    unfreeze_mm_vision_tower: bool = False
    freeze_backbone: bool = False
    lora_enable: bool = False
    mm_tunable_parts: tuple[str, ...] | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *, lora: bool | None = None) -> "TrainingFlags":
        """From a config.json / launch-argument mapping; `lora` overrides lora_enable (e.g. LoRA modules found)."""
        values = values or {}
        return cls(
            tune_mm_mlp_adapter=truthy(values.get("tune_mm_mlp_adapter", False)),
            freeze_mm_mlp_adapter=truthy(values.get("freeze_mm_mlp_adapter", False)),
            unfreeze_mm_vision_tower=truthy(values.get("unfreeze_mm_vision_tower", False)),
            freeze_backbone=truthy(values.get("freeze_backbone", False)),
            lora_enable=truthy(values.get("lora_enable", False)) if lora is None else bool(lora),
            mm_tunable_parts=parse_tunable_parts(values.get("mm_tunable_parts")),
        )

    @property
    def unknown_tunable_parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.mm_tunable_parts or () if p not in TUNABLE_PARTS)

    @property
    def tower_trained(self) -> bool:
        if self.mm_tunable_parts is not None:
            return "mm_vision_tower" in self.mm_tunable_parts
        return self.unfreeze_mm_vision_tower


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    return stage


def expected_trainable(stage: str, unfreeze_vision_tower: bool = False) -> dict[str, bool]:
    """The plain stage policy: component -> trained (the `lora` entry is the LoRA adapters)."""
    check_stage(stage)
    return {
        "vision_tower": bool(unfreeze_vision_tower) and stage != "pretrain",
        "projector": True,
        "image_newline": True,
        "language_model": stage == "finetune",
        "lm_head": stage == "finetune",
        "lora": stage == "lora",
    }


def intended_trainable(stage: str, flags: TrainingFlags | None = None) -> dict[str, bool]:
    """What `stage` should train given the run's flags (tower / projector overrides, tunable parts)."""
    flags = flags or TrainingFlags()
    policy = expected_trainable(stage, flags.tower_trained)
    if flags.mm_tunable_parts is not None:
        parts = flags.mm_tunable_parts
        adapter = "mm_mlp_adapter" in parts or "mm_vision_resampler" in parts
        policy.update(projector=adapter, image_newline=adapter, vision_tower="mm_vision_tower" in parts and stage != "pretrain")
        if stage == "finetune":
            language = "mm_language_model" in parts
            policy.update(language_model=language, lm_head=language)
    if flags.freeze_mm_mlp_adapter:
        policy.update(projector=False, image_newline=False)
    return policy


def infer_stage(flags: TrainingFlags) -> tuple[str, str]:
    """(stage, why) from a run's flags: the stage its train.py call was set up for."""
    if flags.mm_tunable_parts is not None:
        parts = set(flags.mm_tunable_parts)
        if flags.lora_enable:
            return "lora", f"lora_enable with mm_tunable_parts {','.join(flags.mm_tunable_parts)!r}"
        if parts <= {"mm_mlp_adapter", "mm_vision_resampler"}:
            return "pretrain", f"mm_tunable_parts {','.join(flags.mm_tunable_parts)!r} holds only the projector"
        return "finetune", f"mm_tunable_parts {','.join(flags.mm_tunable_parts)!r}"
    if flags.tune_mm_mlp_adapter:
        return "pretrain", "tune_mm_mlp_adapter is set"
    if flags.lora_enable:
        return "lora", "lora_enable is set (or LoRA modules are present)"
    return "finetune", "no tune_mm_mlp_adapter, mm_tunable_parts or LoRA"


def predicted_trainable(flags: TrainingFlags, codebase: str, *, lora_fix: bool = True,
                        image_newline: bool = False) -> dict[str, bool]:
    """What `codebase`'s train.py really leaves trainable for these launch flags (component -> trained).

    Follows the order of its requires_grad calls: ``freeze_backbone`` freezes ``model.model`` (the LLM
    body; lm_head keeps training); PEFT freezes every base weight; ``initialize_vision_modules``
    makes the projector trainable and ``load_model`` freezes the tower; then LLaVA's
    ``tune_mm_mlp_adapter`` (freeze all, projector on) and ``freeze_mm_mlp_adapter``; LLaVA-NeXT's
    legacy branch adds ``unfreeze_mm_vision_tower``, and ``mm_tunable_parts`` freezes everything and
    unfreezes the listed parts - where ``mm_language_model`` unfroze every non-vision parameter,
    the whole LLM even with LoRA, until commit bfbba5a (`lora_fix`; LLaVA-VL/LLaVA-NeXT#508).
    `image_newline`: the model has one (``unpad`` in mm_patch_merge_type).
    """
    lora = flags.lora_enable
    state = {"vision_tower": False, "projector": True, "image_newline": True, "language_model": True,
             "lm_head": True, "lora": False}
    if flags.freeze_backbone:
        state["language_model"] = False
    if lora:
        state.update(language_model=False, lm_head=False, lora=True)
    if codebase == "llava" or flags.mm_tunable_parts is None:
        if flags.tune_mm_mlp_adapter:
            state = dict.fromkeys(state, False)
            state["projector"] = True
            state["lora"] = lora and codebase != "llava" and lora_fix
        if flags.freeze_mm_mlp_adapter:
            state["projector"] = False
        if codebase != "llava":
            state["vision_tower"] = flags.unfreeze_mm_vision_tower
    else:
        parts = flags.mm_tunable_parts
        state = dict.fromkeys(state, False)
        state["projector"] = "mm_mlp_adapter" in parts or "mm_vision_resampler" in parts
        state["vision_tower"] = "mm_vision_tower" in parts
        if "mm_language_model" in parts and not (lora and lora_fix):
            state.update(language_model=True, lm_head=True, image_newline=True, lora=lora)
        if lora and lora_fix:
            state["lora"] = True
    if not image_newline:
        state.pop("image_newline")
    return state
