"""Every supported on-disk layout, written the way its system writes it, is recognised by open_checkpoint."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _ckpt_builders import (  # noqa: E402
    adapter_config,
    hf_4x_state,
    lora_adapter_state,
    original_llava_config,
    original_llava_state,
    original_projector,
    save_hf_llava,
    save_safetensors,
    write_json,
    xtuner_state,
)
from llava_doctor.artifacts.readers import open_checkpoint  # noqa: E402

# tiny Llava: CLIP 2 layers = 39 tensors, projector 4, Llama 2 layers = 20 (incl. embed/norm), lm_head 1
VISION, PROJECTOR, LLM, HEAD = 39, 4, 20, 1
# save_pretrained writes the vision tower without `vision_model.` from transformers 5 on (4.x: with it)
SAVED_LAYOUT = "hf-llava" if int(transformers.__version__.split(".")[0]) >= 5 else "hf-llava-4x"


def counts(ckpt) -> dict[str, int]:
    return {c: len(ts) for c, ts in ckpt.by_component().items() if ts}


def test_hf_llava_5x_save_pretrained(tmp_path):
    ckpt = open_checkpoint(save_hf_llava(tmp_path / "hf"))
    assert (ckpt.format, ckpt.layout, ckpt.config_kind) == ("safetensors", SAVED_LAYOUT, "hf-llava")
    assert counts(ckpt) == {"vision_tower": VISION, "projector": PROJECTOR, "language_model": LLM, "lm_head": HEAD}
    assert not ckpt.integrity and not ckpt.unsafe
    assert {f.kind for f in ckpt.files} >= {"config", "safetensors"}
    assert all(t.offset is not None and t.nbytes == t.numel * 4 for t in ckpt.tensors.values())


def test_hf_llava_sharded(tmp_path):
    ckpt = open_checkpoint(save_hf_llava(tmp_path / "hf", max_shard_size="100KB"))
    assert (ckpt.format, ckpt.layout) == ("safetensors-sharded", SAVED_LAYOUT)
    assert counts(ckpt)["vision_tower"] == VISION and not ckpt.integrity
    assert len({t.file for t in ckpt.tensors.values()}) > 1


def test_hf_llava_4x_keys(tmp_path):
    directory = save_hf_llava(tmp_path / "hf4")
    (directory / "model.safetensors").unlink()
    save_safetensors(directory / "model.safetensors", hf_4x_state())
    ckpt = open_checkpoint(directory)
    assert ckpt.layout == "hf-llava-4x"
    assert counts(ckpt) == {"vision_tower": VISION, "projector": PROJECTOR, "language_model": LLM, "lm_head": HEAD}


def test_original_llava_full(tmp_path):
    write_json(tmp_path / "config.json", original_llava_config())
    save_safetensors(tmp_path / "model.safetensors", original_llava_state())
    ckpt = open_checkpoint(tmp_path)
    assert (ckpt.layout, ckpt.config_kind) == ("llava-original", "llava-original")
    assert counts(ckpt) == {"vision_tower": VISION, "projector": PROJECTOR, "language_model": LLM, "lm_head": HEAD}


def test_original_llava_without_tower_bin(tmp_path):
    write_json(tmp_path / "config.json", original_llava_config())
    torch.save(original_llava_state(with_tower=False), tmp_path / "pytorch_model.bin")
    ckpt = open_checkpoint(tmp_path)
    assert (ckpt.format, ckpt.layout) == ("torch", "llava-original")
    assert "vision_tower" not in counts(ckpt) and counts(ckpt)["projector"] == PROJECTOR


def test_original_llava_pretrain_mm_projector_bin(tmp_path):
    write_json(tmp_path / "config.json", {**original_llava_config(), "tune_mm_mlp_adapter": True})
    torch.save(original_projector(), tmp_path / "mm_projector.bin")
    ckpt = open_checkpoint(tmp_path)
    assert (ckpt.layout, ckpt.config_kind) == ("llava-original-pretrain", "llava-original")
    assert counts(ckpt) == {"projector": PROJECTOR}
    single = open_checkpoint(tmp_path / "mm_projector.bin")  # a file: the config beside it is still read
    assert single.layout == "llava-original-pretrain" and single.config_kind == "llava-original"


def test_original_llava_lora_dir(tmp_path):
    write_json(tmp_path / "config.json", original_llava_config())
    write_json(tmp_path / "adapter_config.json", adapter_config())
    save_safetensors(tmp_path / "adapter_model.safetensors", lora_adapter_state())
    torch.save({f"base_model.model.{k}": v for k, v in original_projector().items()}, tmp_path / "non_lora_trainables.bin")
    ckpt = open_checkpoint(tmp_path)
    assert (ckpt.format, ckpt.layout) == ("peft", "llava-original-lora")
    assert ckpt.adapter_config["peft_type"] == "LORA"
    assert counts(ckpt) == {"lora": 8, "projector": PROJECTOR}


def test_peft_adapter_dir(tmp_path):
    write_json(tmp_path / "adapter_config.json", adapter_config("meta-llama/Llama-2-7b-hf"))
    save_safetensors(tmp_path / "adapter_model.safetensors", lora_adapter_state())
    ckpt = open_checkpoint(tmp_path)
    assert (ckpt.format, ckpt.layout, ckpt.config_kind) == ("peft", "peft-adapter", None)
    assert counts(ckpt) == {"lora": 8}


@pytest.mark.parametrize("with_visual_encoder", [True, False], ids=["with-visual-encoder", "frozen-encoder-omitted"])
def test_xtuner_pth_nested_under_state_dict(tmp_path, with_visual_encoder):
    path = tmp_path / "iter_500.pth"
    torch.save({"meta": {"epoch": 1, "iter": 500}, "state_dict": xtuner_state(with_visual_encoder=with_visual_encoder)}, path)
    ckpt = open_checkpoint(path)
    assert (ckpt.format, ckpt.layout) == ("torch", "xtuner")
    assert ckpt.notes["state_dict_wrappers"] == {"iter_500.pth": "state_dict"}
    expected = {"projector": PROJECTOR, "language_model": LLM, "lm_head": HEAD}
    if with_visual_encoder:
        expected["vision_tower"] = VISION
    assert counts(ckpt) == expected
    # zip records are STORED: every non-empty contiguous tensor is addressable, and the bytes are right
    raw = path.read_bytes()
    info = ckpt.tensors["llm.lm_head.weight"]
    assert info.offset is not None
    assert raw[info.offset: info.offset + info.nbytes] == ckpt.load_tensor(info).numpy().tobytes()


def test_hf_llava_next_with_image_newline(tmp_path):
    if not hasattr(transformers, "LlavaNextConfig"):
        pytest.skip(f"transformers {transformers.__version__} has no LlavaNext (4.39+)")
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        image_token_index=299,
        image_grid_pinpoints=[[32, 32], [32, 64]],
    )
    LlavaNextForConditionalGeneration(config).save_pretrained(tmp_path / "next")
    ckpt = open_checkpoint(tmp_path / "next")
    assert (ckpt.layout, ckpt.config_kind) == ("hf-llava", "hf-llava-next")
    assert counts(ckpt)["image_newline"] == 1 and counts(ckpt)["vision_tower"] == VISION
