"""The trainable policy of a launch, before any model exists: the stage its flags are meant for, and
what the codebase's train.py will really leave trainable (stages.predicted_trainable)."""
from __future__ import annotations

from dataclasses import dataclass

from ..stages import check_stage, infer_stage, predicted_trainable

ASSUMED_BEFORE_FIX = ("assumed a LLaVA-NeXT checkout before commit bfbba5a: its train.py is not on disk to tell "
                      "(run preflight from the checkout, or update it)")


@dataclass(frozen=True)
class LaunchPolicy:
    stage: str
    stage_reason: str
    trainable: dict[str, bool]  # component -> trained, as the training code will set it
    assumption: str | None = None  # a behaviour assumed because the checkout could not be read


def launch_stage(launch, given: str | None = None) -> tuple[str, str]:
    """The stage a launch is for: given, else `--version plain` (LLaVA's pretraining template), else its flags."""
    if given:
        return check_stage(given), "given"
    if str(launch.arg("version", "")) == "plain":
        return "pretrain", "--version plain is the pretraining template"
    stage, why = infer_stage(launch.flags())
    return stage, why.replace("is set (or LoRA modules are present)", "is set")


def launch_policy(launch, given_stage: str | None = None) -> LaunchPolicy:
    flags = launch.flags()
    stage, reason = launch_stage(launch, given_stage)
    lora_fix, assumption = launch.lora_fix, None
    if launch.codebase == "llava-next" and flags.lora_enable and lora_fix is None:
        lora_fix, assumption = False, ASSUMED_BEFORE_FIX
    trainable = predicted_trainable(flags, launch.codebase, lora_fix=True if lora_fix is None else lora_fix,
                                    image_newline="unpad" in str(launch.arg("mm_patch_merge_type", "")))
    return LaunchPolicy(stage, reason, trainable, assumption)
