"""The bundled LLaVA core: configs, tower, projector, model layout, splice, generation, tokenizer, data, stages."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from pathlib import Path
import torch

from llava_doctor.core import data, images
from llava_doctor.core.configs import LlavaLlamaConfig, prepare_vision_tower, tiny_config
from llava_doctor.core.savers import CORE_TOWER, running_tower_key, towers_have_vision_model_level
from llava_doctor.core.model import (
    LlavaLlamaForCausalLM,
    LlavaQwenForCausalLM,
    build_model,
    build_tiny_model,
    generate_greedy,
)
from llava_doctor.core.projector import IdentityMap, build_projector
from llava_doctor.core.stages import apply_stage, expected_trainable, trainable_summary
from llava_doctor.core.tokenizer import (ASSET_DIR, TOKENIZER_FILES, load_tokenizer, portable_tokenizer_json,
                                         tokenizer_corpus, train_tokenizer)
from llava_doctor.layout import detect_layout

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tower_root(tmp_path_factory):
    return tmp_path_factory.mktemp("towers")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def tiny(tower_root, llm="llama", vision="clip", **kwargs):
    return build_tiny_model(tower_root, llm, vision, pretrain_steps=0, **kwargs)


# --- projector -------------------------------------------------------------------------------


def test_projector_layouts():
    mlp2 = build_projector("mlp2x_gelu", 32, 64)
    assert [k for k in mlp2.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert isinstance(mlp2[1], torch.nn.GELU) and mlp2[0].weight.shape == (64, 32) and mlp2[2].weight.shape == (64, 64)
    assert [k for k in build_projector("mlp3x_gelu", 32, 64).state_dict() if k.endswith("weight")] == ["0.weight", "2.weight", "4.weight"]
    assert list(build_projector("linear", 32, 64).state_dict()) == ["weight", "bias"]
    assert isinstance(build_projector("identity", 64, 64), IdentityMap)
    with pytest.raises(ValueError, match="Unknown projector type"):
        build_projector("resampler", 32, 64)
    with pytest.raises(ValueError, match="identity projector"):
        build_projector("identity", 32, 64)


# --- model layout ------------------------------------------------------------------------------


def test_llama_clip_state_dict_is_original_llava_layout(tower_root):
    model = tiny(tower_root)
    keys = list(model.state_dict())
    for key in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.0.bias",
        "model.mm_projector.2.weight",
        "model.mm_projector.2.bias",
        CORE_TOWER + running_tower_key("embeddings.patch_embedding.weight"),
        CORE_TOWER + running_tower_key("embeddings.class_embedding"),
        CORE_TOWER + running_tower_key("encoder.layers.1.mlp.fc2.bias"),
    ):
        assert key in keys, key
    tower = [k for k in keys if k.startswith(CORE_TOWER)]
    # the running transformers' CLIP: 4.x (LLaVA's pin) keeps the `vision_model.` level, 5.x dropped it
    assert tower and {k.startswith(CORE_TOWER + "vision_model.") for k in tower} == {towers_have_vision_model_level()}
    assert detect_layout(keys) == "llava-original"
    tower = model.get_vision_tower()
    assert tower.is_loaded and tower.hidden_size == model.config.mm_hidden_size == 64
    assert not any(p.requires_grad for p in tower.parameters())  # load_model freezes the tower


def test_qwen2_siglip_layout_and_unpad_newline(tower_root):
    model = tiny(tower_root, "qwen2", "siglip", mm_patch_merge_type="spatial_unpad")
    keys = list(model.state_dict())
    assert type(model) is LlavaQwenForCausalLM and model.config.model_type == "llava_qwen"
    assert "model.layers.0.self_attn.q_proj.bias" in keys  # Qwen2's attention biases
    assert "model.image_newline" in keys and model.model.image_newline.shape == (64,)
    assert CORE_TOWER + running_tower_key("embeddings.patch_embedding.bias") in keys
    assert not any("class_embedding" in k for k in keys)  # SigLIP has no CLS token
    assert torch.isfinite(model.model.image_newline).all()


def test_feature_selection(tower_root):
    pictures = torch.zeros(2, 3, 32, 32)
    clip = tiny(tower_root).get_vision_tower()
    assert clip.num_patches == 16 and clip(pictures).shape == (2, 16, 64)  # "patch" drops CLS
    clip.select_feature = "cls_patch"
    assert clip(pictures).shape == (2, 17, 64)
    siglip = tiny(tower_root, "qwen2", "siglip").get_vision_tower()
    assert siglip(pictures).shape == (2, 16, 64)


def test_delay_load_builds_no_tower_until_load_model(tower_root, caplog):
    model = tiny(tower_root, delay_load=True)
    tower = model.get_vision_tower()
    assert not tower.is_loaded and tower.hidden_size == 64 and tower.cfg_only.image_size == 32
    assert not any(k.startswith("model.vision_tower.") for k in model.state_dict())
    with pytest.raises(RuntimeError, match="not loaded"):
        tower(torch.zeros(1, 3, 32, 32))
    tower.load_model()
    from safetensors.torch import load_file

    base = load_file(str(prepare_vision_tower(tower_root, "clip", pretrain_steps=0) / "model.safetensors"))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[f"model.vision_tower.vision_tower.{k}"], v) for k, v in base.items())
    with caplog.at_level(logging.WARNING, logger="llava_doctor.core.vision"):
        tower.load_model()
    assert "already loaded" in caplog.text


def test_unfreeze_forces_eager_load_and_unknown_tower_raises(tower_root, tmp_path):
    model = tiny(tower_root, delay_load=True, unfreeze_mm_vision_tower=True)
    assert model.get_vision_tower().is_loaded
    config = tiny_config(vision_tower=tmp_path / "not-there")
    with pytest.raises(ValueError, match="Unknown vision tower"):
        build_model(config)


# --- splice, forward, generation --------------------------------------------------------------


def test_image_splice_labels_and_padding(tower_root, tokenizer):
    model = tiny(tower_root)
    samples = data.build_samples(3, seed=1)
    batch = data.collate([data.ConversationDataset(samples, tokenizer)[i] for i in range(3)], tokenizer.pad_token_id)
    embeds, mask, positions, labels = model.prepare_multimodal_inputs(
        batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"]
    )
    patches = model.get_vision_tower().num_patches
    lengths = batch["attention_mask"].sum(1)
    assert mask.sum(1).tolist() == (lengths + patches - 1).tolist()
    assert embeds.shape[:2] == labels.shape == (3, int(lengths.max()) + patches - 1)
    features = model.encode_images(batch["images"])
    for row in range(3):
        at = int((batch["input_ids"][row] == model.config.image_token_index).nonzero())
        assert torch.allclose(embeds[row, at : at + patches], features[row])
        assert (labels[row, at : at + patches] == data.IGNORE_INDEX).all()
        real = labels[row][mask[row].bool()]
        assert real[at + patches :].tolist() == batch["labels"][row, at + 1 : lengths[row]].tolist()
        assert positions[row, : mask[row].sum()].tolist() == list(range(int(mask[row].sum())))
    two_images = batch["input_ids"].clone()
    two_images[0, 1] = model.config.image_token_index
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(input_ids=two_images, attention_mask=batch["attention_mask"], images=batch["images"])


def test_first_loss_is_near_ln_vocab(tower_root, tokenizer):
    model = tiny(tower_root)
    dataset = data.ConversationDataset(data.build_samples(8, seed=2), tokenizer)
    with torch.no_grad():
        loss = float(model(**data.collate([dataset[i] for i in range(8)], tokenizer.pad_token_id)).loss)
    assert abs(loss - math.log(model.config.vocab_size)) < 0.5


def test_generate_greedy_and_nan_logits_give_token_zero(tower_root, tokenizer):
    model = tiny(tower_root)
    sample = data.build_samples(1, seed=3)[0]
    result = generate_greedy(model, tokenizer, sample.image, data.DESCRIBE_PROMPT, max_new_tokens=4)
    assert 1 <= len(result.token_ids) <= 4 and result.all_logits_finite
    assert result.prompt_ids[0] == tokenizer.bos_token_id and model.config.image_token_index in result.prompt_ids
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    broken = generate_greedy(model, tokenizer, sample.image, data.DESCRIBE_PROMPT, max_new_tokens=5)
    assert broken.token_ids == [0] * 5 and not broken.all_logits_finite


def test_save_and_from_pretrained_offline(tower_root, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny(tower_root)
    model.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llava_llama" and saved["architectures"] == ["LlavaLlamaForCausalLM"]
    for field in ("mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "tune_mm_mlp_adapter", "image_token_index"):
        assert field in saved
    assert saved["mm_vision_select_layer"] == -2 and saved["mm_vision_select_feature"] == "patch"
    for loader in (LlavaLlamaForCausalLM, AutoModelForCausalLM):
        reloaded = loader.from_pretrained(str(tmp_path))
        assert isinstance(reloaded.config, LlavaLlamaConfig)
        original, again = model.state_dict(), reloaded.state_dict()
        assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


def test_delay_load_from_pretrained_discards_finetuned_tower(tower_root, tmp_path):
    """LLaVA's trap: with delay_load the checkpoint's (fine-tuned) tower is dropped, load_model() brings the base back."""
    model = tiny(tower_root)
    key = CORE_TOWER + running_tower_key("embeddings.patch_embedding.weight")
    base = model.state_dict()[key].clone()
    with torch.no_grad():
        model.state_dict()[key].add_(1.0)
    model.config.delay_load = True
    model.save_pretrained(str(tmp_path))
    reloaded, info = LlavaLlamaForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert key in info["unexpected_keys"] and not reloaded.get_vision_tower().is_loaded
    reloaded.get_vision_tower().load_model()
    assert torch.equal(reloaded.state_dict()[key], base)


# --- tokenizer ---------------------------------------------------------------------------------


def test_bundled_tokenizer(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>", "<image>")] == [0, 1, 2, 3, 4]
    assert 150 <= len(tokenizer) <= 600
    ids = tokenizer("USER: <image>\nDescribe the image.")["input_ids"]
    assert ids[0] == 1 and 4 in ids and tokenizer.unk_token_id not in ids
    text = "A red circle at the top left."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_tokenizer_ships_from_fixtures_and_is_reproducible():
    assert ASSET_DIR.resolve() == (REPO / "fixtures" / "tokenizer").resolve()
    assert all((ASSET_DIR / name).is_file() for name in TOKENIZER_FILES)
    retrained = portable_tokenizer_json(json.loads(train_tokenizer(tokenizer_corpus()).to_str()))
    shipped = json.loads((ASSET_DIR / "tokenizer.json").read_text())
    assert retrained["model"]["vocab"] == shipped["model"]["vocab"] and retrained["model"]["merges"] == shipped["model"]["merges"]


# --- data --------------------------------------------------------------------------------------


def test_samples_are_deterministic_llava_records():
    first, again = data.build_samples(6, seed=5), data.build_samples(6, seed=5)
    assert all(np.array_equal(a.image, b.image) and a.conversations == b.conversations for a, b in zip(first, again))
    record = first[0].record()
    assert set(record) == {"id", "image", "conversations"} and record["image"].endswith(".png")
    turns = record["conversations"]
    assert turns[0]["value"].startswith("<image>\n") and [t["from"] for t in turns[:2]] == ["human", "gpt"]
    assert sum("<image>" in t["value"] for t in turns) == 1
    sample = first[0]
    assert sample.image.shape == (32, 32, 3) and sample.image.dtype == np.uint8
    tint = np.array(images.COLORS[sample.color])
    assert (np.abs(sample.image.astype(int) - tint).max(axis=2) <= 20).sum() > 40  # the shape is drawn in its colour


def test_write_dataset_png_roundtrip(tmp_path):
    samples = data.build_samples(3, seed=6)
    json_path = data.write_dataset(samples, tmp_path)
    records = data.read_dataset(json_path)
    assert [r["id"] for r in records] == [s.id for s in samples]
    assert (tmp_path / "images" / samples[0].image_file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(np.array_equal(r["pixels"], s.image) for r, s in zip(records, samples))


def _png_with_filter(image: np.ndarray, kind: int) -> bytes:
    """An RGB PNG whose every row uses filter `kind` (the residuals computed from the original pixels)."""
    import struct
    import zlib

    pixels = image.astype(np.int32)
    rows = []
    for r in range(pixels.shape[0]):
        line = pixels[r].reshape(-1)
        up = pixels[r - 1].reshape(-1) if r else np.zeros_like(line)
        left = np.concatenate([np.zeros(3, dtype=np.int32), line[:-3]])
        up_left = np.concatenate([np.zeros(3, dtype=np.int32), up[:-3]])
        if kind == 1:
            pred = left
        elif kind == 3:
            pred = (left + up) // 2
        else:
            p = left + up - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        rows.append(bytes([kind]) + ((line - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", [1, 3, 4])
def test_read_png_decodes_every_filter(tmp_path, kind):
    image = data.build_samples(1, seed=8)[0].image
    path = tmp_path / "filtered.png"
    path.write_bytes(_png_with_filter(image, kind))
    assert np.array_equal(images.read_png(path), image)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match="filtered.png"):
        images.read_png(path)


def test_labels_supervise_exactly_the_answers(tokenizer):
    sample = data.build_samples(1, seed=7)[0]
    ids, labels = data.encode_segments(tokenizer, data.render_segments(sample.conversations))
    supervised = [i for i, lab in zip(ids, labels) if lab != data.IGNORE_INDEX]
    answers = [t["value"] for t in sample.conversations if t["from"] == "gpt"]
    assert tokenizer.decode(supervised) == "".join(f" {a}</s>" for a in answers).strip()
    assert labels[0] == data.IGNORE_INDEX  # BOS
    assert all(lab == data.IGNORE_INDEX for i, lab in zip(ids, labels) if i == tokenizer.convert_tokens_to_ids("<image>"))


# --- stages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "lora"])
def test_stage_policies(tower_root, stage):
    if stage == "lora":
        pytest.importorskip("peft")
    model = apply_stage(tiny(tower_root, mm_patch_merge_type="spatial_unpad"), stage)
    summary = trainable_summary(model)
    policy = expected_trainable(stage)
    for component, count in summary.items():
        assert (count.state == "trainable") == policy[component] and count.state != "partly trainable", component
    assert model.config.tune_mm_mlp_adapter == (stage == "pretrain")
    if stage == "lora":
        assert type(model).__name__ == "PeftModelForCausalLM"
        assert summary["lora"].trainable > 0 and summary["language_model"].trainable == 0
        names = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        assert names and not any("vision_tower" in n for n in names)
    if stage == "finetune":
        assert summary["vision_tower"].trainable == 0 and summary["language_model"].trainable == summary["language_model"].total


def test_unfreeze_vision_tower_in_finetune(tower_root):
    model = apply_stage(tiny(tower_root), "finetune", unfreeze_vision_tower=True)
    assert trainable_summary(model)["vision_tower"].state == "trainable" and model.config.unfreeze_mm_vision_tower
    with pytest.raises(ValueError, match="unknown stage"):
        apply_stage(model, "sft")
