"""llm-not-frozen: a pretrain-stage (tune_mm_mlp_adapter) run in which the LLM was never frozen."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Scenario
from ._common import quiet, shapes_dataset, tiny_model, tokenizer

STEPS = 6


def make(out: Path, fixed: bool) -> dict[str, Any]:
    from ..core import savers
    from ..core.stages import apply_stage, component_of_parameter, trainable_summary
    from ..core.train import TrainConfig, train

    with quiet():
        tok = tokenizer()
        model = tiny_model(out)
        savers.save_llava_original(model, out / "base")
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if fixed:
            apply_stage(model, "pretrain")  # LLaVA train.py: model.requires_grad_(False); mm_projector trainable
        else:
            apply_stage(model, "finetune")  # the freeze never ran ...
            model.config.tune_mm_mlp_adapter = True  # ... although the run is configured as pretraining
        summary = trainable_summary(model)
        result = train(model, shapes_dataset(tok, 32), TrainConfig(steps=STEPS, batch_size=8, warmup_steps=1, logging_steps=2))
        savers.save_llava_original(model, out / "trained")
    changed: dict[str, int] = {}
    max_change: dict[str, float] = {}
    for key, value in model.state_dict().items():
        component = component_of_parameter(key)
        delta = float((value.detach() - before[key]).abs().max()) if value.numel() else 0.0
        max_change[component] = max(max_change.get(component, 0.0), delta)
        changed[component] = changed.get(component, 0) + int(delta > 0)
    return {
        "stage": "pretrain",
        "tune_mm_mlp_adapter": True,
        "steps": STEPS,
        "losses": result.losses,
        "base": "base",
        "trained": "trained",
        "trainable_elements": {c: n.trainable for c, n in sorted(summary.items())},
        "total_elements": {c: n.total for c, n in sorted(summary.items())},
        "trainable_parameter_groups": _groups_line(summary),
        "changed_tensors": dict(sorted(changed.items())),
        "max_abs_change": dict(sorted(max_change.items())),
    }


def _groups_line(summary) -> str:
    """The per-group line LLaVA-NeXT logs since bfbba5a (LLaVA-VL/LLaVA-NeXT#508)."""
    names = {"projector": "mm_projector", "vision_tower": "vision_tower", "language_model": "llm_base",
             "lm_head": "lm_head", "lora": "lora"}
    parts = [f"{label}={summary[c].trainable:,}" for c, label in names.items() if c in summary]
    return "Trainable parameter groups: " + ", ".join(parts)


SCENARIO = Scenario(
    name="llm-not-frozen",
    title="Pretrain stage (tune_mm_mlp_adapter) with the LLM not frozen: the LLM's weights change",
    broken=f"""
        The bundled tiny LLaVA was saved as base/ (original LLaVA layout), then trained for {STEPS} steps in
        a run configured as the pretraining stage (tune_mm_mlp_adapter=True) whose code never applied
        LLaVA's freeze (model.requires_grad_(False), then only mm_projector trainable): the LLM and
        lm_head trained along with the projector. trained/ holds the full weights after training, as a
        fork's trainer.save_model writes them (LLaVA's own pretrain stage keeps only mm_projector.bin,
        which would hide the damage: the projector then learnt against an LLM that is thrown away).""",
    fixed=f"""
        Same run with LLaVA's pretrain policy: everything frozen except model.mm_projector. After
        {STEPS} steps only the projector's tensors differ from base/.""",
    seen="""
        Nothing fails. The loss falls as expected; the only traces are the trainable-parameter count
        (LLaVA-VL/LLaVA-NeXT#508: "mm_tunable_parts + LoRA = Full-Model Training (Unintended)", about 3x
        the VRAM) and, since LLaVA-NeXT bfbba5a, a log line like the one in scenario.json
        ("trainable_parameter_groups"). The maintainer's answer in haotian-liu/LLaVA#1059:
            "--tune_mm_mlp_adapter True shall make LLM weights frozen."
        thunlp/LLaVA-UHD#24 found trainable LLM parameters in
        pretraining.""",
    codes=("LD302",),
    command="llava-doctor audit {out}/trained --base {out}/base --stage pretrain --deep",
    make=make,
)
