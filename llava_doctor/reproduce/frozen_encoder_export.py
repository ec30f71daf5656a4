"""frozen-encoder-export: an XTuner-style .pth after training with a frozen vision encoder has no encoder weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Scenario
from ._common import first_line, quiet, shapes_dataset, tiny_model, tokenizer

STEPS = 3
PTH = f"work_dirs/iter_{STEPS}.pth"


def make(out: Path, fixed: bool) -> dict[str, Any]:
    import torch

    from ..core import savers
    from ..core.stages import apply_stage, trainable_summary
    from ..core.train import TrainConfig, train

    with quiet():
        tok = tokenizer()
        model = apply_stage(tiny_model(out), "finetune")  # LLM + projector trained, CLIP frozen
        result = train(model, shapes_dataset(tok, 32), TrainConfig(steps=STEPS, batch_size=8, logging_steps=1))
        pth = savers.save_xtuner_pth(model, out / PTH, freeze_llm=False, freeze_visual_encoder=True,
                                     complete=fixed, iteration=STEPS)
        state = torch.load(pth, weights_only=True)["state_dict"]
        conversion_error = _pth_to_hf(model, state)
        if fixed and conversion_error is None:
            savers.save_hf_native(model, out / "hf_export")
    summary = trainable_summary(model)
    prefixes = sorted({k.split(".")[0] for k in state})
    return {
        "steps": STEPS,
        "losses": result.losses,
        "pth": PTH,
        "freeze_llm": False,
        "freeze_visual_encoder": True,
        "complete_export": fixed,
        "top_level_prefixes": prefixes,
        "keys_saved": len(state),
        "visual_encoder_keys": sum(1 for k in state if k.startswith("visual_encoder.")),
        "visual_encoder_params_in_model": summary["vision_tower"].tensors,
        "hf_export": "hf_export" if fixed and conversion_error is None else None,
        "pth_to_hf_error": conversion_error,
    }


def _pth_to_hf(model, state) -> str | None:
    """XTuner's `--save-format huggingface` step: the .pth mapped onto LlavaForConditionalGeneration, strict load.

    Recreated with the running transformers' in-memory names (XTuner ran on 4.x, where the keys read
    ``vision_tower.vision_model.*``; 5.x reads ``model.vision_tower.*``): the same strict load of a state dict
    without the tower.
    """
    from transformers import LlavaForConditionalGeneration

    from ..core import savers

    config = savers.config_dict(model)
    vision = savers.config_dict(None, model.get_vision_tower().config)
    hf_model = LlavaForConditionalGeneration(savers.hf_llava_config(config, vision, image_token_index=config["image_token_index"]))
    mapping = savers.hf_memory_mapping(hf_model)
    mapped = {}
    for key, value in state.items():
        core = savers.core_key_from_xtuner(key)
        hf_key = mapping(core) if core else None
        if hf_key:
            mapped[hf_key] = value
    try:
        hf_model.load_state_dict(mapped, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return first_line(" ".join(lines[:2]), 300)
    return None


SCENARIO = Scenario(
    name="frozen-encoder-export",
    title="XTuner-style export after training with a frozen vision encoder: no encoder weights",
    broken=f"""
        The bundled tiny LLaVA was fine-tuned for {STEPS} steps with the CLIP tower frozen (XTuner's
        llava_v15 finetune config: freeze_llm=False, freeze_visual_encoder=True), then saved as XTuner's
        LLaVAModel does: {PTH} = {{"meta": ..., "state_dict": LLaVAModel.state_dict()}}, whose state_dict
        override leaves out every frozen module. The file holds llm.* and projector.model.* and no
        visual_encoder.* at all.""",
    fixed="""
        Same training; the export keeps the frozen encoder's base weights (the maintainer's workaround in
        InternLM/xtuner#827: force need_visual_encoder=True), so the .pth carries
        visual_encoder.vision_model.* and the conversion to a transformers LlavaForConditionalGeneration
        succeeds (written to hf_export/).""",
    seen="""
        `xtuner convert pth_to_hf CONFIG iter_N.pth OUT --save-format huggingface` fails on its strict
        load_state_dict: the tower keys are missing (InternLM/xtuner#827). The strict load this scenario
        recreates says (scenario.json, "pth_to_hf_error"):
            Error(s) in loading state_dict for LlavaForConditionalGeneration: Missing key(s) in
            state_dict: "model.vision_tower.embeddings.class_embedding", ...
        Loaded through transformers instead, the tower is silently random-initialised (LOAD REPORT:
        MISSING).""",
    codes=("LD202",),
    command="llava-doctor audit --fail-on warning {out}/" + PTH,  # LD202 rates a frozen-ViT .pth a warning
    make=make,
)
