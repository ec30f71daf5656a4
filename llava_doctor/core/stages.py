"""The bundled model's training stages, applied: requires_grad set by the one stage policy
(``llava_doctor.stages``, which holds the table), and a per-component trainable summary.

``image_newline``, when the model has one, follows the projector. Counts use ``ds_numel`` for ZeRO-3
partitioned parameters, whose ``numel()`` is 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..layout import component_of, strip_peft_prefix
from ..stages import expected_trainable

LORA_TARGET = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def component_of_parameter(name: str) -> str:
    """Component of a parameter name of the bundled model (plain or wrapped by peft)."""
    return component_of(strip_peft_prefix(name), "llava-original")


def apply_stage(model, stage: str, *, unfreeze_vision_tower: bool = False, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0):
    """Set requires_grad per the stage's policy and record it in the config; returns the model to train.

    `lora` wraps the model with peft (``PeftModelForCausalLM``) and returns the wrapper.
    """
    policy = expected_trainable(stage, unfreeze_vision_tower)
    if stage == "lora":
        model = _wrap_lora(model, lora_r, lora_alpha, lora_dropout)
    for name, param in model.named_parameters():
        component = component_of_parameter(name)
        param.requires_grad_(policy.get(component, False))
    config = model.config
    config.tune_mm_mlp_adapter = stage == "pretrain"
    config.unfreeze_mm_vision_tower = bool(policy["vision_tower"])
    return model


def _wrap_lora(model, r: int, alpha: int, dropout: float):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # peft is the optional `lora` extra
        raise ImportError("the lora stage needs peft: pip install 'llava-doctor[lora]'") from error
    import warnings

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def parameter_numel(param) -> int:
    """Elements of a parameter; ZeRO-3 partitioned ones report their full size via ds_numel."""
    return int(getattr(param, "ds_numel", param.numel()))


@dataclass
class ComponentCount:
    trainable: int = 0
    total: int = 0
    tensors: int = 0
    trainable_tensors: int = 0

    @property
    def state(self) -> str:
        if self.trainable_tensors == 0:
            return "frozen"
        return "trainable" if self.trainable_tensors == self.tensors else "partly trainable"


def trainable_summary(model) -> dict[str, ComponentCount]:
    """Per component: trainable and total element counts (ds_numel-aware) and tensor counts."""
    summary: dict[str, ComponentCount] = {}
    for name, param in model.named_parameters():
        count = summary.setdefault(component_of_parameter(name), ComponentCount())
        numel = parameter_numel(param)
        count.total += numel
        count.tensors += 1
        if param.requires_grad:
            count.trainable += numel
            count.trainable_tensors += 1
    return summary
