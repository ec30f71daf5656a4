"""The savers write each system's on-disk layout exactly (keys, files, configs) and load with weights_only=True."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from safetensors import safe_open  # noqa: E402

from llava_doctor.checks._live_examples import hf_part  # noqa: E402
from llava_doctor.core import savers  # noqa: E402
from llava_doctor.layout import detect_layout, vision_key_style  # noqa: E402

TOWER = "model.vision_tower.vision_tower."


@pytest.fixture(scope="session")
def tower_root(tmp_path_factory):
    return tmp_path_factory.mktemp("towers")


@pytest.fixture(scope="session")
def core_model(tower_root):
    from llava_doctor.core.model import build_tiny_model

    return build_tiny_model(tower_root, seed=1, pretrain_steps=0)


@pytest.fixture(scope="session")
def core_state(core_model):
    return {k: v.detach().clone() for k, v in core_model.state_dict().items()}


def safetensors_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def load_weights_only(path):
    return torch.load(path, weights_only=True, map_location="cpu")


def test_core_keys_are_the_original_tree(core_state):
    tower = [k for k in core_state if k.startswith(TOWER)]
    # the running transformers' CLIP: with `vision_model.` under 4.x (as LLaVA's own checkpoints), without under 5.x
    assert tower and {k.startswith(TOWER + "vision_model.") for k in tower} == {savers.towers_have_vision_model_level()}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.mm_projector.0.weight",
            "model.mm_projector.2.bias"} <= set(core_state)


def test_key_renamings_are_pure_and_total():
    assert savers.llava_original_key(TOWER + "embeddings.patch_embedding.weight") == TOWER + "vision_model.embeddings.patch_embedding.weight"
    assert savers.llava_original_key(TOWER + "vision_model.post_layernorm.bias") == TOWER + "vision_model.post_layernorm.bias"
    assert savers.xtuner_key("model.layers.0.mlp.up_proj.weight") == "llm.model.layers.0.mlp.up_proj.weight"
    assert savers.xtuner_key("lm_head.weight") == "llm.lm_head.weight"
    assert savers.xtuner_key("model.mm_projector.2.bias") == "projector.model.2.bias"
    assert savers.xtuner_key(TOWER + "pre_layrnorm.weight") == "visual_encoder.vision_model.pre_layrnorm.weight"
    assert savers.xtuner_key("model.image_newline") is None
    assert savers.hf_memory_key("model.mm_projector.0.weight") == "model.multi_modal_projector.linear_1.weight"
    assert savers.hf_memory_key("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert savers.hf_memory_key("model.norm.weight") == "model.language_model.norm.weight"
    assert savers.hf_memory_key(TOWER + "vision_model.embeddings.class_embedding") == "model.vision_tower.embeddings.class_embedding"
    assert savers.hf_disk_key_to_4x("vision_tower.encoder.layers.0.mlp.fc1.bias") == "vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias"
    assert savers.hf_disk_key_to_4x("language_model.model.norm.weight") == "language_model.model.norm.weight"


def test_original_finetune_safetensors(core_model, core_state, tmp_path):
    out = savers.save_llava_original(core_model, tmp_path / "ft")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    tensors, metadata = safetensors_tensors(out / "model.safetensors")
    assert metadata == {"format": "pt"}
    assert set(tensors) == {savers.llava_original_key(k) for k in core_state}
    tower = [k for k in tensors if k.startswith(TOWER)]
    assert len(tower) == len([k for k in core_state if k.startswith(TOWER)]) > 0
    assert all(k.startswith(TOWER + "vision_model.") for k in tower)  # the 4.x level LLaVA's pin writes
    for key, value in core_state.items():
        assert torch.equal(tensors[savers.llava_original_key(key)], value), key
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaLlamaForCausalLM"]
    assert config["transformers_version"] == "4.37.2" and config["torch_dtype"] == "float32"
    assert config["mm_projector_type"] == "mlp2x_gelu" and config["mm_hidden_size"] == 64
    assert detect_layout(tensors, config) == "llava-original"
    assert vision_key_style(tensors, "llava-original") == "4.x"


def test_original_finetune_bin_loads_weights_only(core_model, core_state, tmp_path):
    out = savers.save_llava_original(core_model, tmp_path / "ft", safe=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "pytorch_model.bin"]
    state = load_weights_only(out / "pytorch_model.bin")
    assert set(state) == {savers.llava_original_key(k) for k in core_state}


def test_original_pretrain_writes_only_the_projector(core_model, tmp_path):
    out = savers.save_llava_original(core_model, tmp_path / "pt", stage="pretrain")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "mm_projector.bin"]
    state = load_weights_only(out / "mm_projector.bin")
    assert sorted(state) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                             "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    assert state["model.mm_projector.0.weight"].shape == (64, 64)
    assert detect_layout(state, None, ["mm_projector.bin"]) == "llava-original-pretrain"


def test_original_lora(tower_root, tmp_path):
    pytest.importorskip("peft")
    from llava_doctor.core.model import build_tiny_model
    from llava_doctor.core.stages import apply_stage

    model = apply_stage(build_tiny_model(tower_root, seed=2, pretrain_steps=0), "lora")
    out = savers.save_llava_original(model, tmp_path / "lora", stage="lora")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "non_lora_trainables.bin", "config.json"} <= names
    adapter, _ = safetensors_tensors(out / "adapter_model.safetensors")
    assert adapter and all(k.startswith("base_model.model.model.layers.") for k in adapter)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in adapter)  # adapter name stripped
    non_lora = load_weights_only(out / "non_lora_trainables.bin")
    assert sorted(non_lora) == ["base_model.model.model.mm_projector.0.bias", "base_model.model.model.mm_projector.0.weight",
                                "base_model.model.model.mm_projector.2.bias", "base_model.model.model.mm_projector.2.weight"]
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlavaLlamaForCausalLM"]
    assert detect_layout(list(adapter) + list(non_lora), None, names) == "llava-original-lora"


def test_original_lora_wraps_a_plain_model_like_llava(core_model, tmp_path):
    pytest.importorskip("peft")
    assert sorted(savers.llava_lora_targets(core_model)) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.parametrize(
    "freeze_llm, freeze_visual_encoder, complete, expected_prefixes",
    [
        (False, True, False, {"llm.model.", "llm.lm_head.", "projector.model."}),  # llava_v15 finetune config
        (True, True, False, {"projector.model."}),  # pretrain config
        (False, False, False, {"llm.model.", "llm.lm_head.", "projector.model.", "visual_encoder.vision_model."}),
        (False, True, True, {"llm.model.", "llm.lm_head.", "projector.model.", "visual_encoder.vision_model."}),
    ],
)
def test_xtuner_pth(core_model, core_state, tmp_path, freeze_llm, freeze_visual_encoder, complete, expected_prefixes):
    path = savers.save_xtuner_pth(core_model, tmp_path / "iter_10.pth", freeze_llm=freeze_llm,
                                  freeze_visual_encoder=freeze_visual_encoder, complete=complete, iteration=10)
    saved = load_weights_only(path)
    assert sorted(saved) == ["meta", "state_dict"] and saved["meta"]["iter"] == 10
    state = saved["state_dict"]
    prefixes = {next(p for p in ("llm.model.", "llm.lm_head.", "projector.model.", "visual_encoder.vision_model.") if k.startswith(p))
                for k in state}
    assert prefixes == expected_prefixes
    assert sorted(k for k in state if k.startswith("projector.")) == [
        "projector.model.0.bias", "projector.model.0.weight", "projector.model.2.bias", "projector.model.2.weight"]
    if "visual_encoder.vision_model." in expected_prefixes:
        tower = {k for k in core_state if k.startswith(TOWER)}
        assert {k for k in state if k.startswith("visual_encoder.")} == {savers.xtuner_key(k) for k in tower}
    if "llm.model." in expected_prefixes:
        assert torch.equal(state["llm.model.embed_tokens.weight"], core_state["model.embed_tokens.weight"])
    assert detect_layout(state) == "xtuner"


def test_xtuner_pth_llm_lora(tower_root, tmp_path):
    pytest.importorskip("peft")
    from llava_doctor.core.model import build_tiny_model
    from llava_doctor.core.stages import apply_stage

    model = apply_stage(build_tiny_model(tower_root, seed=5, pretrain_steps=0), "lora")
    path = savers.save_xtuner_pth(model, tmp_path / "iter_5.pth", freeze_llm=True, freeze_visual_encoder=True)
    state = load_weights_only(path)["state_dict"]
    lora = [k for k in state if k.startswith("llm.")]
    assert lora and all(k.startswith("llm.base_model.model.model.layers.") and ".lora_" in k and k.endswith(".default.weight")
                        for k in lora)
    assert "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in state
    assert sorted(k for k in state if not k.startswith("llm.")) == [
        "projector.model.0.bias", "projector.model.0.weight", "projector.model.2.bias", "projector.model.2.weight"]
    assert detect_layout(state) == "xtuner"


@pytest.mark.parametrize("key_style", ["5.x", "4.x"])
def test_hf_native(core_model, core_state, tmp_path, key_style):
    from transformers import LlavaForConditionalGeneration

    out = savers.save_hf_native(core_model, tmp_path / "hf", key_style=key_style)
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    tensors, _ = safetensors_tensors(out / "model.safetensors")
    tower_prefix = "vision_tower.vision_model." if key_style == "4.x" else "vision_tower."
    tower = [k for k in tensors if k.startswith("vision_tower.")]
    assert tower and all(k.startswith(tower_prefix) for k in tower)
    if key_style == "5.x":
        assert not any(k.startswith("vision_tower.vision_model.") for k in tower)
    assert {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias",
            "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"} <= set(tensors)
    assert torch.equal(tensors["multi_modal_projector.linear_1.weight"], core_state["model.mm_projector.0.weight"])
    assert detect_layout(tensors) == ("hf-llava-4x" if key_style == "4.x" else "hf-llava")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and config["projector_hidden_act"] == "gelu"
    assert config["image_token_index"] == core_model.config.image_token_index
    reloaded, info = LlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    patch_embedding = TOWER + savers.running_tower_key("embeddings.patch_embedding.weight")
    if key_style == "5.x" and savers.towers_have_vision_model_level():
        # transformers 4.x cannot read a 5.x-style tower: every key is missing (and its values random)
        assert sum(k.startswith("vision_tower.vision_model.") for k in info["missing_keys"]) == len(tower)
    else:
        assert torch.equal(hf_part(reloaded, "vision_tower").state_dict()[savers.running_tower_key(
            "embeddings.patch_embedding.weight")], core_state[patch_embedding])
    assert torch.equal(reloaded.get_decoder().layers[1].mlp.down_proj.weight,
                       core_state["model.layers.1.mlp.down_proj.weight"])


def test_hf_native_rejects_unknown_key_style(core_model, tmp_path):
    with pytest.raises(ValueError, match="key_style"):
        savers.save_hf_native(core_model, tmp_path / "hf", key_style="6.x")


@pytest.mark.slow
def test_zero3_unguarded_and_gathered(cpu_dist, tower_root, tmp_path):
    import deepspeed

    from llava_doctor.core.model import build_tiny_model
    from llava_doctor.core.train import deepspeed_config

    model = build_tiny_model(tower_root, seed=3, pretrain_steps=0)
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-3),
                                      config=deepspeed_config(3, micro_batch_size=1))
    module = engine.module  # ZeRO-3 partitions every parameter at initialize
    assert all(p.numel() == 0 for p in module.parameters())

    broken = savers.save_unguarded_zero3(module, tmp_path / "broken.safetensors")
    tensors, _ = safetensors_tensors(broken)
    assert set(tensors) == {savers.llava_original_key(k) for k in full}
    assert all(tuple(t.shape) == (0,) for t in tensors.values())

    fixed = savers.save_gathered_zero3(engine, tmp_path / "fixed.safetensors")
    tensors, _ = safetensors_tensors(fixed)
    assert set(tensors) == {savers.llava_original_key(k) for k in full}
    for key, value in full.items():
        assert torch.equal(tensors[savers.llava_original_key(key)], value), key
    assert all(p.numel() == 0 for p in module.parameters())  # re-partitioned after the gather


@pytest.mark.parametrize("llm, vision", [("qwen2", "siglip"), ("qwen2", "clip")])
def test_other_families_round_trip(tower_root, tmp_path, llm, vision):
    from transformers import LlavaForConditionalGeneration

    from llava_doctor.core.model import build_tiny_model

    model = build_tiny_model(tower_root, llm, vision, seed=4, pretrain_steps=0)
    state = model.state_dict()
    original = savers.save_llava_original(model, tmp_path / "original")
    tensors, _ = safetensors_tensors(original / "model.safetensors")
    assert set(tensors) == {savers.llava_original_key(k) for k in state}
    assert json.loads((original / "config.json").read_text())["architectures"] == ["LlavaQwenForCausalLM"]
    hf = savers.save_hf_native(model, tmp_path / "hf", key_style="4.x")
    reloaded = LlavaForConditionalGeneration.from_pretrained(str(hf))
    assert reloaded.config.text_config.model_type == "qwen2"
    assert reloaded.config.vision_config.model_type == f"{vision}_vision_model"
    assert torch.equal(reloaded.get_decoder().layers[0].self_attn.q_proj.bias,
                       state["model.layers.0.self_attn.q_proj.bias"])
    patch_embedding = savers.running_tower_key("embeddings.patch_embedding.weight")
    assert torch.equal(hf_part(reloaded, "vision_tower").state_dict()[patch_embedding], state[TOWER + patch_embedding])
