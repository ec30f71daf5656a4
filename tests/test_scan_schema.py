"""The value scan's bit rule and chunking, and the schema's pure parts (no transformers needed)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from llava_doctor.artifacts.checkpoint import Checkpoint, TensorInfo
from llava_doctor.layout import canonical_key
from llava_doctor.scan import BIT_FORMATS, scan_checkpoint
from llava_doctor.schema import (
    build_schema, cheap_issues, config_problems, tower_family_of_keys,
)


def write_safetensors(path, arrays: dict[str, tuple[str, bytes, tuple[int, ...]]]) -> Checkpoint:
    """Hand-written safetensors (dtype string, raw bytes, shape) -> a Checkpoint with byte offsets."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, raw, shape) in arrays.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    base = 8 + len(head)
    tensors = {
        name: TensorInfo(name, tuple(h["shape"]), h["dtype"], path.name,
                         offset=base + h["data_offsets"][0], nbytes=h["data_offsets"][1] - h["data_offsets"][0])
        for name, h in header.items()
    }
    return Checkpoint(root=str(path.parent), name=path.name, format="safetensors", layout="unknown", tensors=tensors)


def bf16(values) -> bytes:
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()


def test_bit_rule_per_dtype(tmp_path):
    f32 = np.array([1.0, np.nan, np.inf, -np.inf, 2.0], dtype=np.float32)
    ckpt = write_safetensors(tmp_path / "m.safetensors", {
        "f32": ("F32", f32.tobytes(), (5,)),
        "f16": ("F16", f32.astype(np.float16).tobytes(), (5,)),
        "bf16": ("BF16", bf16(f32), (5,)),
        "f64": ("F64", f32.astype(np.float64).tobytes(), (5,)),
        "signed_zero": ("BF16", bf16([0.0, -0.0, 0.0]), (3,)),
        "const": ("BF16", bf16([0.25] * 7), (7,)),
        "ids": ("I64", np.arange(4, dtype=np.int64).tobytes(), (4,)),
        "e4m3_nan": ("F8_E4M3", bytes([0x38, 0x7F, 0xFF]), (3,)),
    })
    result = scan_checkpoint(ckpt, buffer_bytes=64)
    for name in ("f32", "f16", "bf16", "f64"):
        assert (result.tensors[name].nan, result.tensors[name].inf) == (1, 2), name
    assert result.tensors["signed_zero"].all_zero and not result.tensors["signed_zero"].constant
    assert result.tensors["const"].constant and result.tensors["const"].value == 0.25
    assert (result.tensors["e4m3_nan"].nan, result.tensors["e4m3_nan"].inf) == (2, 0)
    assert "ids" in result.skipped and "ids" not in result.tensors


def test_constant_is_decided_across_chunks(tmp_path):
    values = np.full(1000, 3.0, dtype=np.float16)
    values[-1] = 4.0  # differs only in the last chunk
    ckpt = write_safetensors(tmp_path / "m.safetensors", {
        "almost": ("F16", values.tobytes(), (1000,)),
        "exact": ("F16", np.full(1000, 3.0, dtype=np.float16).tobytes(), (1000,)),
    })
    result = scan_checkpoint(ckpt, buffer_bytes=128)
    assert not result.tensors["almost"].constant
    assert result.tensors["exact"].constant and result.tensors["exact"].value == 3.0
    assert result.bytes_read == 4000


def test_truncated_data_is_an_error_entry_not_a_traceback(tmp_path):
    ckpt = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", np.ones(64, np.float32).tobytes(), (64,))})
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-100])
    result = scan_checkpoint(ckpt)
    assert "w" in result.errors and "w" not in result.tensors


def test_loader_path_with_numpy_arrays():
    data = {"a": np.array([[0.0, np.nan]], dtype=np.float32), "b": np.zeros((2, 2), dtype=np.float16)}
    tensors = {k: TensorInfo(k, v.shape, {"float32": "F32", "float16": "F16"}[str(v.dtype)], "x.bin") for k, v in data.items()}
    ckpt = Checkpoint(root="/", name="x", format="torch", layout="unknown", tensors=tensors, loader=lambda i: data[i.name])
    result = scan_checkpoint(ckpt, buffer_bytes=64)
    assert result.tensors["a"].nan == 1 and result.tensors["b"].all_zero


def test_bit_formats_cover_float_dtypes():
    assert set(BIT_FORMATS) >= {"F16", "BF16", "F32", "F64"}


@pytest.mark.parametrize("key,layout,canonical", [
    ("vision_tower.vision_model.embeddings.patch_embedding.weight", "hf-llava-4x", "vision_tower:embeddings.patch_embedding.weight"),
    ("vision_tower.embeddings.patch_embedding.weight", "hf-llava", "vision_tower:embeddings.patch_embedding.weight"),
    ("model.language_model.layers.0.mlp.up_proj.weight", "hf-llava-memory", "language_model:layers.0.mlp.up_proj.weight"),
    ("language_model.lm_head.weight", "hf-llava", "lm_head:weight"),
    ("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight", "llava-original", "vision_tower:pre_layrnorm.weight"),
    ("model.mm_projector.0.weight", "llava-original", "projector:0.weight"),
    ("projector.model.2.bias", "xtuner", "projector:2.bias"),
    ("llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", "xtuner", None),
])
def test_canonical_keys(key, layout, canonical):
    assert canonical_key(key, layout) == canonical


def test_config_guard_rejects_garbage_sizes():
    assert config_problems({"hidden_size": -4, "vocab_size": "big", "num_hidden_layers": 2}, "llava-original") == [
        "hidden_size=-4 is not an integer in 1..1048576", "vocab_size='big' is not an integer in 1..16777216"]
    nested = {"model_type": "llava", "text_config": {"hidden_size": True}, "vision_config": {"patch_size": 0}}
    assert len(config_problems(nested, "hf-llava")) == 2


def test_config_implying_far_more_parameters_is_not_built():
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": 65536,
              "intermediate_size": 131072, "num_hidden_layers": 1000, "num_attention_heads": 64, "vocab_size": 32000,
              "mm_hidden_size": 64}
    tensors = {"model.embed_tokens.weight": TensorInfo("model.embed_tokens.weight", (32000, 64), "F16", "m", "language_model")}
    ckpt = Checkpoint(root="/", name="x", format="safetensors", layout="llava-original", tensors=tensors,
                      config=config, config_kind="llava-original")
    schema = build_schema(ckpt)
    assert not schema.expected and "not built" in schema.notes[0]
    # the cheap rule still sees the embedding's width against hidden_size
    assert [i.rule for i in cheap_issues(ckpt)] == ["hidden"]


def test_tower_family_from_keys():
    assert tower_family_of_keys({"embeddings.class_embedding", "embeddings.patch_embedding.weight"}) == "clip"
    assert tower_family_of_keys({"embeddings.patch_embedding.bias", "embeddings.patch_embedding.weight"}) == "siglip"
    assert tower_family_of_keys({"encoder.layers.0.mlp.fc1.weight"}) is None


def test_file_ending_inside_the_last_element(tmp_path):
    ckpt = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", np.ones(4, np.float32).tobytes(), (4,))})
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-2])  # half of the last float32
    assert "w" in scan_checkpoint(ckpt).errors


@pytest.mark.parametrize("config,problem", [
    ({"text_config": {"num_hidden_layers": 10**6}}, "text_config.num_hidden_layers=1000000"),
    ({"vision_config": {"num_hidden_layers": 10**6}}, "vision_config.num_hidden_layers=1000000"),
    ({"text_config": {"model_type": "mixtral", "num_local_experts": 10**6}}, "text_config.num_local_experts=1000000"),
    ({"text_config": {"num_hidden_layers": 512, "n_routed_experts": 512}}, "512 layers x 512 experts"),
    ({"text_config": {"rope_scaling": {"original_max_position_embeddings": 10**9}}}, "original_max_position_embeddings"),
    ({"num_hidden_layers": 10**6, "mm_vision_tower": "x"}, "num_hidden_layers=1000000"),
])
def test_config_guard_bounds_what_the_build_depends_on_at_any_depth(config, problem):
    assert any(problem in p for p in config_problems(config, None)), config_problems(config, None)


def test_a_sane_config_has_no_problems():
    config = {"model_type": "llava", "vision_feature_layer": -2, "tie_word_embeddings": False,
              "text_config": {"num_hidden_layers": 32, "hidden_size": 4096, "max_position_embeddings": 131072,
                              "num_local_experts": 8, "num_experts_per_tok": 2, "rope_scaling": {"factor": 8.0},
                              "max_window_layers": 28, "layer_norm_eps": 1e-5},
              "vision_config": {"num_hidden_layers": 24, "hidden_size": 1024, "image_size": 336, "patch_size": 14}}
    assert config_problems(config, "hf-llava") == []


def test_a_tower_config_declaring_a_million_layers_is_not_built(tmp_path):
    """Original LLaVA reaches the tower's own config.json through mm_vision_tower: it is bounded too."""
    tower = tmp_path / "tower"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": 64,
                                                   "num_hidden_layers": 10**6, "num_attention_heads": 4}))
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300,
              "mm_vision_tower": str(tower), "mm_hidden_size": 64}
    ckpt = Checkpoint(root=str(tmp_path), name="x", format="safetensors", layout="llava-original", tensors={},
                      config=config, config_kind="llava-original")
    pytest.importorskip("transformers")
    schema = build_schema(ckpt)
    assert any("vision tower config" in n and "num_hidden_layers=1000000" in n for n in schema.notes), schema.notes
    assert not any(k.startswith("vision_tower:") for k in schema.expected)


def test_sparse_file_holes_are_found_and_never_read(tmp_path):
    """A pre-allocated shard: header written, 4 GiB of tensor data never written. No data is read for it."""
    from llava_doctor.artifacts.readers import open_checkpoint

    numel = 1 << 31  # F16: 4 GiB
    header = json.dumps({"model.layers.0.mlp.up_proj.weight": {"dtype": "F16", "shape": [numel],
                                                                "data_offsets": [0, 2 * numel]}}).encode()
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + 2 * numel)
    ckpt = open_checkpoint(path)
    holes = ckpt.holes["model.safetensors"]
    if not holes.holes:
        pytest.skip("this filesystem reports no holes (SEEK_HOLE unsupported)")
    assert holes.bytes > 2 * numel - 4096 * 2
    result = scan_checkpoint(ckpt)
    (scan,) = result.tensors.values()
    assert scan.all_zero and scan.in_hole and result.bytes_read < 1 << 16
