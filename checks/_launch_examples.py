"""Launch records for the launch checks' examples: the arguments of LLaVA's v1.5 / LLaVA-NeXT scripts,
parsed with the real argument tables, and folder facts written as the configs of the real models.
Built in memory: nothing is read from disk and nothing is imported beyond the engine."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from llava_doctor.artifacts.launch import AdapterFile, DeepSpeedFile, Launch, Reference
from llava_doctor.preflight.arguments import BUILTIN_ARGS, installed_hf_arguments, merge_specs, parse_mapping

VICUNA_13B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 5120, "num_hidden_layers": 40}
QWEN2_7B = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_hidden_layers": 28}
LLAVA_V15_13B = {**VICUNA_13B, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
                 "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_type": "mlp2x_gelu",
                 "mm_hidden_size": 1024}
CLIP_L336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "num_hidden_layers": 24, "image_size": 336,
             "patch_size": 14}
SIGLIP_SO400M = {"model_type": "siglip", "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27,
                                                            "image_size": 384, "patch_size": 14}}
VICUNA_SPECIALS = frozenset({"<s>", "</s>", "<unk>"})
QWEN_SPECIALS = frozenset({"<|endoftext|>", "<|im_start|>", "<|im_end|>"})

# the arguments of haotian-liu/LLaVA scripts/v1_5/finetune.sh (paths shortened)
FINETUNE = {
    "deepspeed": "./scripts/zero3.json", "model_name_or_path": "lmsys/vicuna-13b-v1.5", "version": "v1",
    "data_path": "./playground/data/llava_v1_5_mix665k.json", "image_folder": "./playground/data",
    "vision_tower": "openai/clip-vit-large-patch14-336",
    "pretrain_mm_mlp_adapter": "./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin",
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False, "image_aspect_ratio": "pad", "group_by_modality_length": True, "bf16": True,
    "output_dir": "./checkpoints/llava-v1.5-13b", "num_train_epochs": 1, "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1, "learning_rate": 2e-5, "model_max_length": 2048, "gradient_checkpointing": True,
}
PRETRAIN = {k: v for k, v in FINETUNE.items() if k != "pretrain_mm_mlp_adapter"} | {
    "deepspeed": "./scripts/zero2.json", "version": "plain", "tune_mm_mlp_adapter": True, "learning_rate": 1e-3,
    "output_dir": "./checkpoints/llava-v1.5-13b-pretrain"}
# LLaVA-NeXT scripts/train/finetune_ov.sh
ONEVISION = {
    "deepspeed": "scripts/zero3.json", "model_name_or_path": "Qwen/Qwen2-7B-Instruct", "version": "qwen_1_5",
    "data_path": "next_ov_stage.yaml", "image_folder": "/data/llava_data",
    "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "mm_vision_tower_lr": 2e-6,
    "vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
    "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "anyres_max_9",
    "mm_patch_merge_type": "spatial_unpad", "bf16": True, "output_dir": "/checkpoints/onevision",
    "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "learning_rate": 1e-5,
    "model_max_length": 32768,
}
ZERO3 = {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
         "gradient_accumulation_steps": "auto",
         "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": "auto",
                               "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                               "stage3_gather_16bit_weights_on_model_save": True}}
ZERO2 = {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
         "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}


def projector_file(hidden: int, mm_hidden: int, depth: int = 2) -> dict[str, tuple[int, ...]]:
    """The key table of an mm_projector.bin saved by LLaVA's pretraining (mlp{depth}x_gelu)."""
    shapes = {"model.mm_projector.0.weight": (hidden, mm_hidden), "model.mm_projector.0.bias": (hidden,)}
    for k in range(1, depth):
        shapes[f"model.mm_projector.{2 * k}.weight"] = (hidden, hidden)
        shapes[f"model.mm_projector.{2 * k}.bias"] = (hidden,)
    return shapes


def launch(arguments: Mapping[str, Any], *, codebase: str = "llava", model: Mapping[str, Any] | None = VICUNA_13B,
           tower: Mapping[str, Any] | None = CLIP_L336, tower_how: str = "--map",
           specials: frozenset[str] = VICUNA_SPECIALS, deepspeed: Mapping[str, Any] | None = None,
           deepspeed_problem: str | None = None, adapter: Mapping[str, tuple[int, ...]] | None = None,
           adapter_problem: str | None = None, lora_fix: bool | None = None, name: str = "finetune.sh",
           **fields: Any) -> Callable[[], Launch]:
    """A builder of a Launch whose folders hold `model` / `tower` configs (None: not found locally)."""

    def build() -> Launch:
        hf = installed_hf_arguments()
        specs = merge_specs(hf.fields if hf else (), BUILTIN_ARGS[codebase])
        parsed = parse_mapping(dict(arguments), specs)
        result = Launch(name=name, codebase=codebase, codebase_reason="example", recipe=codebase,
                        arguments=parsed.values, given={k: f"--{k}" for k in parsed.given}, rejected=parsed.rejected,
                        accepted=frozenset(specs), transformers_version=hf.version if hf else None,
                        launcher="deepspeed", script="llava/train/train_mem.py", lora_fix=lora_fix, **fields)
        for flag, config, how, tokens in (("model_name_or_path", model, "--map", specials),
                                          ("vision_tower", tower, tower_how, frozenset())):
            value = arguments.get(flag)
            if value is None:
                continue
            if config is None:
                result.references[flag] = Reference(flag, value, None, "not in the HF cache /root/.cache/huggingface/hub")
            else:
                result.references[flag] = Reference(flag, value, f"/models/{value}", how, True, config, None, tokens)
        if "deepspeed" in arguments:
            result.deepspeed = DeepSpeedFile(arguments["deepspeed"], f"/run/{arguments['deepspeed']}", deepspeed,
                                             deepspeed_problem)
        if "pretrain_mm_mlp_adapter" in arguments:
            result.adapter = AdapterFile(arguments["pretrain_mm_mlp_adapter"], "/run/mm_projector.bin", adapter,
                                         adapter_problem)
        return result

    return build
