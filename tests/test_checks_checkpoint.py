"""LD201-LD205 and LD208 on real artifacts written by transformers / DeepSpeed / torch, each with its fixed twin."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from llava_doctor.artifacts.readers import open_checkpoint  # noqa: E402
from llava_doctor.checks._live_examples import hf_part  # noqa: E402
from llava_doctor.core import savers  # noqa: E402
from llava_doctor.registry import Context, all_checks  # noqa: E402
from tests._transformers import has, needs  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TEXT = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False)
VISION = dict(hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=4)


def findings(path, code: str, **context):
    check = all_checks()[code]()
    context.setdefault("deep", check.deep)
    return [f for f in check.run(open_checkpoint(path), Context(**context)) if f.code == code]


def messages(found) -> list[str]:
    return [f.message for f in found]


def llava_config(family: str = "clip"):
    vision = transformers.SiglipVisionConfig(**VISION) if family == "siglip" else transformers.CLIPVisionConfig(**VISION)
    return transformers.LlavaConfig(text_config=transformers.LlamaConfig(**TEXT), vision_config=vision,
                                    image_token_index=999)


def tiny_llava(family: str = "clip"):
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(llava_config(family)).eval()


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    """A tiny CLIP+Llama Llava as transformers 5 save_pretrained writes it (5.x on-disk keys; written by 4.x, the
    tower's `vision_model.` level, the only difference, is taken out)."""
    path = tmp_path_factory.mktemp("llava")
    tiny_llava().save_pretrained(path)
    if savers.towers_have_vision_model_level():
        rewrite(path, path, lambda t: {savers.hf_disk_key_to_5x(k): v for k, v in t.items()})
    return path


def rewrite(src: Path, dst: Path, edit=None, config_edit=None) -> Path:
    """Copy a save_pretrained dir, changing its tensors (dict -> dict) and/or its config."""
    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(src / "model.safetensors")
    tensors = {k: v.clone() for k, v in tensors.items()}
    if edit:
        tensors = edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


# ----------------------------------------------------------------------------- LD201


@pytest.mark.slow
def test_ld201_zero3_unguarded_save_vs_gathered(tmp_path, cpu_dist):
    import deepspeed

    # import the modeling code (and torch._dynamo with it) before zero.Init patches torch.Tensor.__new__
    model_class, config = transformers.LlavaForConditionalGeneration, llava_config()
    with deepspeed.zero.Init(config_dict_or_path={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}):
        model = model_class(config)
    broken, fixed = tmp_path / "unguarded", tmp_path / "gathered"
    for d in (broken, fixed):
        d.mkdir()
        llava_config().to_json_file(d / "config.json")
    save_file(model.state_dict(), broken / "model.safetensors")
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        save_file({k: v.clone() for k, v in model.state_dict().items()}, fixed / "model.safetensors")

    found = findings(broken, "LD201")
    assert sorted(f.extra["component"] for f in found) == ["language_model", "lm_head", "projector", "vision_tower"]
    tower = next(f for f in found if f.extra["component"] == "vision_tower")
    first = min(k for k in model.state_dict() if "vision_tower." in k)  # as this transformers names it in memory
    assert tower.message.startswith(f"vision_tower: 39 of 39 tensors have shape [0] (e.g. {first}, "), tower.message
    assert "stage3_gather_16bit_weights_on_model_save" in tower.fix and "zero_to_fp32" in tower.fix
    assert findings(fixed, "LD201") == []
    # LD203 does not double-report LD201's tensors; LD202 sees the components as present
    assert findings(broken, "LD203") == [] and findings(broken, "LD202") == []


def _train_one_step(engine):
    from llava_doctor.core.builder import transformers_major

    image_tokens = 64 if transformers_major() >= 5 else 1  # transformers 4.x expands one <image> token itself
    ids = torch.tensor([[1] + [999] * image_tokens + [5, 6, 7, 8]])
    out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(1, 3, 32, 32), labels=ids.clone())
    engine.backward(out.loss)
    engine.step()


@pytest.mark.slow
def test_ld201_deepspeed_dir_with_and_without_consolidated_weights(tmp_path, cpu_dist):
    import deepspeed

    model = tiny_llava().train()
    hf_part(model, "vision_tower").requires_grad_(False)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    }
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-3), config=config)
    _train_one_step(engine)
    bare, complete = tmp_path / "bare", tmp_path / "complete"
    engine.save_checkpoint(str(bare))
    engine.save_checkpoint(str(complete))
    engine.save_16bit_model(str(complete / "hf16"))

    found = findings(bare, "LD201")
    assert len(found) == 1, messages(found)
    assert "no consolidated weights" in found[0].message and str(found[0].severity) == "warning"
    ckpt = open_checkpoint(bare)
    assert ckpt.deepspeed.stage == 3 and ckpt.deepspeed.frozen_param_shapes  # the frozen tower's real shapes
    # pointing at the global_step folder itself gives the same answer
    step_dir = bare / (bare / "latest").read_text().strip()
    assert len(findings(step_dir, "LD201")) == 1

    assert findings(complete, "LD201") == []
    assert not any(t.is_empty for t in open_checkpoint(complete).tensors.values())


# ----------------------------------------------------------------------------- LD202


def test_ld202_hf_llava_without_vision_tower_vs_complete(llava_dir, tmp_path):
    no_tower = rewrite(llava_dir, tmp_path / "no_tower", lambda t: {k: v for k, v in t.items() if not k.startswith("vision_tower.")})
    found = findings(no_tower, "LD202")
    assert len(found) == 1 and found[0].message.startswith("vision_tower: no vision_tower.* keys"), messages(found)
    assert str(found[0].severity) == "error"
    assert findings(llava_dir, "LD202") == []


def _xtuner_state(with_visual_encoder: bool) -> dict:
    """The keys XTuner's LLaVAModel.state_dict() keeps (notes/transformers_llava.md §3.2), written as 4.x named them."""
    model = tiny_llava()
    state: dict = {}
    for key, value in model.get_decoder().state_dict().items():
        state[f"llm.model.{key}"] = value
    state["llm.lm_head.weight"] = model.get_output_embeddings().weight.detach()
    for src, dst in (("linear_1", "0"), ("linear_2", "2")):
        for p in ("weight", "bias"):
            state[f"projector.model.{dst}.{p}"] = getattr(hf_part(model, "multi_modal_projector"), src).state_dict()[p]
    if with_visual_encoder:
        for key, value in hf_part(model, "vision_tower").state_dict().items():
            state["visual_encoder." + savers.with_vision_model_level(key)] = value
    return {"state_dict": {k: v.clone() for k, v in state.items()}, "meta": {"epoch": 1}}


def test_ld202_xtuner_pth_frozen_vit_vs_trained_vit(tmp_path):
    frozen, trained = tmp_path / "frozen" / "iter_500.pth", tmp_path / "trained" / "iter_500.pth"
    for path, with_vit in ((frozen, False), (trained, True)):
        path.parent.mkdir()
        torch.save(_xtuner_state(with_vit), path)
    assert open_checkpoint(frozen).layout == "xtuner"
    found = findings(frozen, "LD202")
    assert len(found) == 1 and "need_visual_encoder" in found[0].message, messages(found)
    assert findings(trained, "LD202") == []
    assert findings(trained, "LD208") == []  # 4.x names


def test_ld202_original_llava_pretrain_projector(tmp_path):
    model = tiny_llava()
    proj = hf_part(model, "multi_modal_projector")
    torch.save({"model.mm_projector.0.weight": proj.linear_1.weight.detach().clone(),
                "model.mm_projector.0.bias": proj.linear_1.bias.detach().clone(),
                "model.mm_projector.2.weight": proj.linear_2.weight.detach().clone(),
                "model.mm_projector.2.bias": proj.linear_2.bias.detach().clone()}, tmp_path / "mm_projector.bin")
    (tmp_path / "config.json").write_text(json.dumps(_original_config(96)))
    found = {f.extra["component"]: f for f in findings(tmp_path, "LD202")}
    assert set(found) == {"language_model", "vision_tower"}, [f.message for f in found.values()]
    assert "--model-base" in found["language_model"].message and str(found["language_model"].severity) == "info"
    # the tower is not "normal": the finding says what LLaVA's loader does with it
    assert "LLaVA delay-loads it" in found["vision_tower"].message and "downloaded from the hub" in found["vision_tower"].message
    found = {f.extra["component"]: f for f in findings(tmp_path, "LD202", stage="finetune")}
    assert str(found["language_model"].severity) == "error"


# the 40-byte adapter of huggingface/trl#4416 and the few-hundred-byte files of huggingface/peft#286
def _empty_adapter(directory, safe: bool):
    from peft import LoraConfig, get_peft_model

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TEXT, "num_hidden_layers": 1}))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(directory, state_dict={}, safe_serialization=safe)  # what a ZeRO-3 filter leaves
    return directory


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft x transformers 5
@pytest.mark.parametrize("writer", ["save_file({})", "torch.save({})", "peft adapter.safetensors", "peft adapter.bin"])
def test_ld202_weights_with_no_tensors_vs_a_saved_twin(writer, tmp_path, llava_dir):
    pytest.importorskip("peft")
    if writer == "save_file({})":
        save_file({}, tmp_path / "model.safetensors", metadata={"format": "pt"})
        path, size = tmp_path / "model.safetensors", 40
    elif writer == "torch.save({})":
        torch.save({}, tmp_path / "pytorch_model.bin")
        path, size = tmp_path / "pytorch_model.bin", None
    else:
        path = _empty_adapter(tmp_path / "adapter", safe=writer.endswith("safetensors"))
        size = 40 if writer.endswith("safetensors") else None
    from llava_doctor.api import audit

    report = audit([path])
    (found,) = report.by_code("LD202")
    assert str(found.severity) == "error" and "holds no tensors" in found.message
    if size is not None:
        assert f"({size} bytes)" in found.message
    if writer.startswith("peft"):
        assert "Found missing adapter keys" in found.message and "untouched base model" in found.message
    assert report.exit_code(found.severity) == 1
    assert not audit([llava_dir]).by_code("LD202")  # a save that holds its tensors


# ----------------------------------------------------------------------------- LD203


def test_ld203_vocab_rows_vs_vocab_size(llava_dir, tmp_path):
    def grow(t):
        for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
            t[key] = torch.cat([t[key], torch.zeros(8, 64)])
        return t

    resized = rewrite(llava_dir, tmp_path / "resized", grow)
    found = findings(resized, "LD203")
    assert sorted(f.location.split(":")[-1] for f in found) == [
        "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"], messages(found)
    assert all("1008 rows but vocab_size is 1000" in f.message for f in found)
    fixed = rewrite(llava_dir, tmp_path / "fixed", grow, lambda c: c["text_config"].update(vocab_size=1008))
    assert findings(fixed, "LD203") == []
    assert findings(llava_dir, "LD203") == []


def test_ld203_schema_catches_a_shape_the_cheap_rules_do_not(llava_dir, tmp_path):
    def shrink(t):
        t["language_model.model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
        return t

    edited = rewrite(llava_dir, tmp_path / "edited", shrink)
    found = findings(edited, "LD203")
    assert len(found) == 1 and "layers.1.mlp.up_proj.weight: shape [100, 64]" in found[0].message
    assert "expects [128, 64]" in found[0].message
    assert findings(edited, "LD203", options={"schema": False}) == []


def _original_config(mm_hidden: int, **extra) -> dict:
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", **TEXT,
              "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": mm_hidden,
              "mm_projector_type": "mlp2x_gelu", "transformers_version": "4.37.2"}
    config.update(extra)
    return config


def _original_llava_dir(path: Path, mm_hidden: int) -> Path:
    """An original-LLaVA full fine-tune (LlavaLlamaForCausalLM keys, flat config); the tower is left to delay_load."""
    model = tiny_llava()
    path.mkdir()
    state = {f"model.{k}": v for k, v in model.get_decoder().state_dict().items()}
    state["lm_head.weight"] = model.get_output_embeddings().weight.detach()
    proj = hf_part(model, "multi_modal_projector")
    state.update({"model.mm_projector.0.weight": proj.linear_1.weight, "model.mm_projector.0.bias": proj.linear_1.bias,
                  "model.mm_projector.2.weight": proj.linear_2.weight, "model.mm_projector.2.bias": proj.linear_2.bias})
    save_file({k: v.detach().clone() for k, v in state.items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(_original_config(mm_hidden)))
    return path


def test_ld203_mm_hidden_size_vs_projector(tmp_path):
    wrong = _original_llava_dir(tmp_path / "wrong", mm_hidden=1024)
    right = _original_llava_dir(tmp_path / "right", mm_hidden=96)
    assert open_checkpoint(wrong).config_kind == "llava-original"
    found = findings(wrong, "LD203")
    assert len(found) == 1 and "projector input is 96 but mm_hidden_size is 1024" in found[0].message, messages(found)
    assert findings(right, "LD203") == []  # the LLM built from the flat config agrees


def test_ld203_siglip_config_with_clip_tower(llava_dir, tmp_path):
    siglip = tmp_path / "siglip"
    tiny_llava("siglip").save_pretrained(siglip)
    assert findings(siglip, "LD203") == []
    swapped = rewrite(llava_dir, tmp_path / "swapped", config_edit=lambda c: c.update(
        vision_config=json.loads((siglip / "config.json").read_text())["vision_config"]))
    found = findings(swapped, "LD203")
    assert len(found) == 1 and "shaped like CLIP but the config describes SIGLIP" in found[0].message, messages(found)


def test_ld203_garbage_config_is_a_warning_not_a_crash(llava_dir, tmp_path):
    bad = rewrite(llava_dir, tmp_path / "bad", config_edit=lambda c: c["text_config"].update(num_hidden_layers=10**9))
    found = findings(bad, "LD203")
    assert len(found) == 1 and "num_hidden_layers=1000000000" in found[0].message
    assert str(found[0].severity) == "warning"
    assert messages(findings(bad, "LD203", options={"schema": False})) == messages(found)


# ----------------------------------------------------------------------------- LD204 / LD205


def _poison(t):
    t["multi_modal_projector.linear_2.bias"][3] = float("nan")
    t["language_model.model.layers.0.mlp.up_proj.weight"][0, :2] = float("inf")
    return t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ld204_nan_inf_injected_vs_clean(llava_dir, tmp_path, dtype):
    cast = lambda t: {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()}  # noqa: E731
    poisoned = rewrite(llava_dir, tmp_path / "poisoned", lambda t: _poison(cast(t)))
    clean = rewrite(llava_dir, tmp_path / "clean", cast)
    found = findings(poisoned, "LD204")
    assert messages(found) == [
        f"language_model.model.layers.0.mlp.up_proj.weight: 2 Inf of 8,192 values (language_model, {_st(dtype)}); expected all finite",
        f"multi_modal_projector.linear_2.bias: 1 NaN of 64 values (projector, {_st(dtype)}); expected all finite",
    ]
    assert findings(clean, "LD204") == []


def _st(dtype) -> str:
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]


def test_ld204_pickled_bin_goes_through_the_loader(llava_dir, tmp_path):
    tensors = _poison({k: v.clone() for k, v in load_file(llava_dir / "model.safetensors").items()})
    (tmp_path / "bin").mkdir()
    torch.save(tensors, tmp_path / "bin" / "pytorch_model.bin")
    shutil.copy(llava_dir / "config.json", tmp_path / "bin" / "config.json")
    found = findings(tmp_path / "bin", "LD204")
    assert [f.location.split(":")[-1] for f in found] == [
        "language_model.model.layers.0.mlp.up_proj.weight", "multi_modal_projector.linear_2.bias"]


def test_ld205_zeroed_matrix_vs_freshly_initialised(llava_dir, tmp_path):
    def zero(t):
        t["multi_modal_projector.linear_1.weight"].zero_()
        return t

    zeroed = rewrite(llava_dir, tmp_path / "zeroed", zero)
    found = findings(zeroed, "LD205")
    assert messages(found) == [
        "multi_modal_projector.linear_1.weight (projector, shape [64, 96]) is all zero; expected trained values"]
    # a freshly initialised model (zero biases, unit LayerNorm weights) is not reported
    assert findings(llava_dir, "LD205") == []


def _zero_initialised(model) -> set[str]:
    return {k for k, v in model.state_dict().items() if v.numel() and v.is_floating_point() and not v.any()}


def _fresh_models():
    """The LLaVA-family classes this transformers has, freshly initialised: CLIP / SigLIP (with its attention-pooling
    head) x Llama / Qwen2."""
    siglip = dict(VISION, vision_use_head=True)
    qwen2 = {k: v for k, v in TEXT.items()}
    pinpoints = dict(image_grid_pinpoints=[[32, 32]])
    yield transformers.LlavaForConditionalGeneration(llava_config())
    if has("LlavaNextConfig"):
        yield transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(
            vision_config=transformers.CLIPVisionConfig(**VISION), text_config=transformers.LlamaConfig(**TEXT),
            image_token_index=999, **pinpoints))
    if has("LlavaOnevisionConfig"):
        yield transformers.LlavaOnevisionForConditionalGeneration(transformers.LlavaOnevisionConfig(
            vision_config=transformers.SiglipVisionConfig(**siglip), text_config=transformers.Qwen2Config(**qwen2),
            image_token_index=999, **pinpoints))


def test_ld205_zero_by_design_covers_every_tensor_the_classes_initialise_to_zero():
    """The table is checked against the classes' own initialisation, not written from memory."""
    from llava_doctor.schema import zero_by_design

    for model in _fresh_models():
        zeros = _zero_initialised(model)
        state = model.state_dict()
        assert zeros, type(model).__name__
        uncovered = sorted(k for k in zeros if not zero_by_design(k, state[k].dim()))
        assert not uncovered, (type(model).__name__, uncovered)
        # and the table is not a blanket: no weight matrix of a fresh model is zero by design
        assert not [k for k, v in state.items() if v.dim() >= 2 and zero_by_design(k, v.dim())]


@needs("LlavaOnevisionConfig")
def test_ld205_onevision_attention_pooling_head_vs_a_zeroed_weight(tmp_path):
    """OneVision's SigLIP head: `in_proj_bias` is zero by initialisation (nn.MultiheadAttention); not a finding."""
    model = list(_fresh_models())[-1]
    model.save_pretrained(tmp_path / "ov")
    keys = load_file(tmp_path / "ov" / "model.safetensors")
    assert not keys["vision_tower.head.attention.in_proj_bias"].any()  # what the trial warned about
    assert findings(tmp_path / "ov", "LD205") == []

    def zero(t):
        t["vision_tower.head.attention.in_proj_weight"].zero_()
        return t

    found = findings(rewrite(tmp_path / "ov", tmp_path / "zeroed", zero), "LD205")
    assert len(found) == 1 and "vision_tower.head.attention.in_proj_weight" in found[0].message


def test_deep_scan_runs_once_per_checkpoint(llava_dir):
    from llava_doctor.scan import SCAN_NOTE

    ckpt = open_checkpoint(llava_dir)
    checks = all_checks()
    list(checks["LD204"]().run(ckpt, Context(deep=True)))
    first = ckpt.notes[SCAN_NOTE]
    list(checks["LD205"]().run(ckpt, Context(deep=True)))
    assert ckpt.notes[SCAN_NOTE] is first and first.bytes_read > 0


# ----------------------------------------------------------------------------- LD208


def test_ld208_5x_keys_vs_4x_keys(llava_dir, tmp_path):
    found = findings(llava_dir, "LD208")
    assert len(found) == 1 and found[0].message.startswith("39 vision-tower keys use the transformers 5 style"), messages(found)
    assert str(found[0].severity) == "info"  # right for transformers >= 5, the writer; a note for 4.x consumers
    old_style = rewrite(llava_dir, tmp_path / "old", lambda t: {
        (k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k): v
        for k, v in t.items()})
    assert open_checkpoint(old_style).layout == "hf-llava-4x"
    assert findings(old_style, "LD208") == []
    # transformers 5 reads the 4.x names: nothing else disagrees
    for code in ("LD201", "LD202", "LD203"):
        assert findings(old_style, code) == [], code


def test_original_llava_with_a_local_tower_config(tmp_path):
    """mm_vision_tower naming a local CLIP folder: its config drives the tower's expected shapes."""
    tower_dir = tmp_path / "clip-local"
    transformers.CLIPVisionConfig(**VISION).save_pretrained(tower_dir)
    ckpt = _original_llava_dir(tmp_path / "ckpt", mm_hidden=96)
    tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).state_dict()
    state = load_file(ckpt / "model.safetensors")
    state.update({"model.vision_tower.vision_tower." + savers.with_vision_model_level(k): v.clone() for k, v in tower.items()})
    save_file(state, ckpt / "model.safetensors")
    config = json.loads((ckpt / "config.json").read_text())
    config.update(mm_vision_tower=str(tower_dir), unfreeze_mm_vision_tower=True)
    (ckpt / "config.json").write_text(json.dumps(config))
    assert findings(ckpt, "LD203") == [] and findings(ckpt, "LD202") == [] and findings(ckpt, "LD208") == []

    transformers.CLIPVisionConfig(**{**VISION, "patch_size": 8}).save_pretrained(tower_dir)  # another tower
    found = findings(ckpt, "LD203")
    assert [f.extra["rule"] for f in found] == ["patch-embedding", "schema"], messages(found)
    assert "patch embedding is [96, 3, 4, 4] but the vision config implies [96, 3, 8, 8]" in found[0].message
    assert "position_embedding.weight: shape [65, 96]" in found[1].message  # 17 positions for 32/8 patches
