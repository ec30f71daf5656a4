"""zero3-save: real ZeRO-3 training, then the weights saved from the partitioned model without a gather."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Scenario
from ._common import first_line, quiet, shapes_dataset, tiny_model, tokenizer

STEPS = 3


def make(out: Path, fixed: bool) -> dict[str, Any]:
    from ..core import savers
    from ..core.stages import apply_stage
    from ..core.train import TrainConfig, deepspeed_config, train_deepspeed

    with quiet():
        tok = tokenizer()
        model = apply_stage(tiny_model(out), "finetune")
        # stage3_gather_16bit_weights_on_model_save stays false (DeepSpeed's default), as in the failing runs
        engine, result = train_deepspeed(model, shapes_dataset(tok, 32), TrainConfig(steps=STEPS, batch_size=8, logging_steps=1),
                                         ds_config=deepspeed_config(3))
        module = engine.module
        true_shapes = {savers.llava_original_key(n): list(p.ds_shape) for n, p in module.named_parameters()}
        in_memory = {savers.llava_original_key(n): list(p.shape) for n, p in module.named_parameters()}
        checkpoint = out / "checkpoint"
        savers.write_llava_config(module, checkpoint)
        weights = checkpoint / "model.safetensors"
        if fixed:
            savers.save_gathered_zero3(module, weights)
        else:
            savers.save_unguarded_zero3(module, weights)
        load_error = _load_into_fresh_model(out, weights)
        engine.save_checkpoint(str(out / "ds_checkpoint"))  # the engine's own sharded save, from which zero_to_fp32 recovers
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        saved = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    return {
        "zero_stage": 3,
        "world_size": 1,
        "steps": STEPS,
        "losses": result.losses,
        "checkpoint": "checkpoint",
        "weights": "checkpoint/model.safetensors",
        "deepspeed_checkpoint": "ds_checkpoint",
        "tensors_saved": len(saved),
        "zero_size_tensors": sum(1 for shape in saved.values() if 0 in shape),
        "in_memory_shapes_sample": dict(list(in_memory.items())[:2]),
        "true_shapes_sample": dict(list(true_shapes.items())[:2]),
        "saved_shapes": saved,
        "true_shapes": true_shapes,
        "load_error": load_error,
    }


def _load_into_fresh_model(out: Path, weights: Path) -> str | None:
    """What loading the saved file into an ordinary (unpartitioned) model says: torch's own message."""
    from safetensors.torch import load_file

    from ..core import savers

    fresh = tiny_model(out, seed=1)
    state = {savers.core_key(k): v for k, v in load_file(str(weights)).items()}
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        return first_line(lines[0] if lines else str(error))
    return None


SCENARIO = Scenario(
    name="zero3-save",
    title="ZeRO-3 weights saved without gathering: every tensor is torch.Size([0])",
    broken=f"""
        The bundled tiny LLaVA (Llama + CLIP, finetune stage) was trained for {STEPS} steps with the real
        DeepSpeed engine, ZeRO stage 3 (world size 1, gloo on CPU,
        stage3_gather_16bit_weights_on_model_save false). Then model.state_dict() of the partitioned
        model was written to checkpoint/model.safetensors with no deepspeed.zero.GatheredParameters
        around it - what a fork that calls save_pretrained/state_dict directly does. Under ZeRO-3 each
        rank holds only a flat shard (param.ds_tensor); the parameter itself is an empty placeholder,
        so every saved tensor has shape [0] and the file is a few kilobytes. ds_checkpoint/ is the engine's
        own save_checkpoint directory of the same run, from which zero_to_fp32.py can still rebuild the
        weights.""",
    fixed="""
        Same training run; the weights were saved under deepspeed.zero.GatheredParameters (LLaVA's
        maybe_zero_3 pattern), so every tensor has its full shape (DeepSpeed's equivalents:
        stage3_gather_16bit_weights_on_model_save true + save_16bit_model, or zero_to_fp32.py).""",
    seen="""
        Training looks normal. Loading the checkpoint later fails with
            size mismatch for model.layers.26.self_attn.k_proj.weight: copying a param with shape
            torch.Size([0]) from checkpoint, the shape in current model is torch.Size([512, 3584])
        (OpenRLHF/OpenRLHF#839; the message this scenario's file gives is in scenario.json,
        "load_error"). Printing a weight shows tensor([], dtype=torch.float16); adapter files of
        40-443 bytes (huggingface/trl#4416, huggingface/peft#286).""",
    codes=("LD201",),
    command="llava-doctor audit {out}/checkpoint",
    make=make,
)
