"""The failures preflight predicts from a launch, reproduced with the real components (DeepSpeed ZeRO-3 on
CPU, transformers, PEFT, the bundled core), each beside its fixed twin."""
from __future__ import annotations

import json
import warnings

import pytest

from llava_doctor.preflight import deepspeed_config as ds
from llava_doctor.preflight.models import projector_shapes, select_layer_range, tower_facts
from llava_doctor.stages import TrainingFlags, predicted_trainable

pytestmark = pytest.mark.slow
ZERO3 = {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
         "gradient_accumulation_steps": "auto",
         "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                               "stage3_param_persistence_threshold": 0,
                               "stage3_gather_16bit_weights_on_model_save": True}}
ARGS = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "bf16": False, "fp16": False,
        "learning_rate": 1e-3, "weight_decay": 0.0, "max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
        "adam_epsilon": 1e-8}


def _projector():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))


@pytest.mark.parametrize("gather", [False, True])
def test_zero3_save_without_the_gather_flag_writes_no_weights(cpu_dist, tmp_path, gather):
    """LD901: what preflight reads as "no loadable weights at save" is what DeepSpeed does with the filled config."""
    import deepspeed
    import torch

    config = json.loads(json.dumps(ZERO3))
    if not gather:
        del config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert ds.gather_on_save(config)[0] is gather
    filled, mismatches, left = ds.fill_auto(config, ARGS, 16, ds.hf_auto_keys())
    assert not mismatches and not left
    assert ds.validate(filled) is None  # DeepSpeed's own config model accepts it
    model = _projector()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=filled)
    saved = engine.save_16bit_model(str(tmp_path))
    assert saved is gather and (tmp_path / "pytorch_model.bin").exists() is gather
    if gather:
        state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
        assert {k: tuple(v.shape) for k, v in state.items()} == projector_shapes("mlp2x_gelu", 8, 16)


def test_adapter_into_a_partitioned_projector(cpu_dist):
    """LD901 (haotian-liu/LLaVA#1619): load_state_dict into a ZeRO-3 partitioned projector; fixed under GatheredParameters."""
    import deepspeed
    import torch

    adapter = {k: torch.full(v.shape, 0.5) for k, v in _projector().state_dict().items()}
    with deepspeed.zero.Init(config_dict_or_path={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}):
        projector = _projector()
    with pytest.raises(RuntimeError, match=r"the shape in current model is torch.Size\(\[0\]\)"):
        projector.load_state_dict(adapter)
    with deepspeed.zero.GatheredParameters(list(projector.parameters()), modifier_rank=0):
        projector.load_state_dict(adapter)
    with deepspeed.zero.GatheredParameters(list(projector.parameters())):
        assert float(projector[0].weight.detach().mean()) == 0.5


def test_deepspeed_rejects_what_preflight_reports():
    """LD901: a misspelt ZeRO key is rejected by DeepSpeed's config model; an "auto" the HF integration leaves
    unfilled reaches DeepSpeed as the string 'auto'."""
    from deepspeed.runtime.config import DeepSpeedConfig

    config = json.loads(json.dumps(ZERO3))
    config["zero_optimization"]["stage3_gather_fp16_weights"] = True
    config["steps_per_print"] = "auto"
    filled, _mismatches, left = ds.fill_auto(config, ARGS, 16, ds.hf_auto_keys())
    assert "Extra inputs are not permitted" in ds.validate(filled)
    assert left == ["steps_per_print"]
    del filled["zero_optimization"]["stage3_gather_fp16_weights"]
    assert ds.validate(filled) is None
    assert DeepSpeedConfig({**filled, "steps_per_print": "auto"}).steps_per_print == "auto"


def test_qwen2_overflows_float16_but_not_bfloat16():
    """LD902: a Qwen2 whose residual stream holds activations past 65504 (as Qwen2's real ones do) gives NaN
    logits in float16 and finite ones in bfloat16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llava_doctor.reproduce.nan_logits import FP16_MAX, scale_residual_stream

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        hidden = model.model.embed_tokens(ids).abs().max()
        scale_residual_stream(model, 4 * FP16_MAX / float(hidden))
        bf16 = model.to(torch.bfloat16)(ids).logits
        fp16 = model.to(torch.float16)(ids).logits
    assert torch.isfinite(bf16).all() and not torch.isfinite(fp16).all()


def test_local_siglip_folder_loaded_as_clip_is_not_the_siglip(tmp_path):
    """LD903: what LLaVA-NeXT's builder does with a local SigLIP folder - CLIPVisionModel.from_pretrained on it."""
    import torch
    from transformers import CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, image_size=32, patch_size=8))
    siglip.save_pretrained(tmp_path)
    assert tower_facts(json.loads((tmp_path / "config.json").read_text()))["family"] == "siglip"
    try:
        clip = CLIPVisionModel.from_pretrained(str(tmp_path))
    except (RuntimeError, ValueError, OSError):
        return  # transformers refuses the load (size mismatches)
    loaded = clip.vision_model.embeddings.patch_embedding.weight
    saved = siglip.vision_model.embeddings.patch_embedding.weight
    assert loaded.shape != saved.shape or not torch.equal(loaded, saved)  # the weights did not arrive


def test_select_layer_outside_the_tower_raises_at_the_first_forward():
    """LD903: feature_select indexes hidden_states; preflight's valid range is exactly what indexing allows."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=16, patch_size=8)
    low, high = select_layer_range(tower_facts({"model_type": "clip_vision_model", **config.to_dict()}))
    hidden_states = CLIPVisionModel(config)(torch.zeros(1, 3, 16, 16), output_hidden_states=True).hidden_states
    hidden_states[low], hidden_states[high]
    for outside in (low - 1, high + 1):
        with pytest.raises(IndexError):
            hidden_states[outside]


def test_peft_freezes_what_predicted_trainable_says():
    """LD301 (launch): PEFT freezes every base weight, lm_head included, and trains the LoRA adapters only."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava_doctor.core.stages import LORA_TARGET, component_of_parameter

    torch.manual_seed(0)
    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                            num_hidden_layers=1, num_attention_heads=2)),
                               LoraConfig(r=2, target_modules=LORA_TARGET, task_type="CAUSAL_LM"))
    trained: dict[str, bool] = {}
    for name, param in model.named_parameters():
        component = component_of_parameter(name)
        trained[component] = trained.get(component, False) or param.requires_grad
    predicted = predicted_trainable(TrainingFlags(lora_enable=True), "llava")
    assert {c: trained[c] for c in ("language_model", "lm_head", "lora")} == \
        {c: predicted[c] for c in ("language_model", "lm_head", "lora")}
