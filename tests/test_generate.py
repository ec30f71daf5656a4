"""`llava-doctor generate` and `llava_doctor.check_generation` on real models of every family.

The healthy twin is the bundled core's model trained here on the shapes dataset (it names held-out
pictures, so its answer depends on the image), saved as an original-LLaVA folder and converted to a
transformers Llava folder. Each broken model is a real way the failure happens (a projector zeroed or
newly initialised, activations past float16's range, an LM head without weights, a tower left random by
the delay_load trap); each check fires on its broken model and stays silent on the twin.
"""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

import _generate_models as models  # noqa: E402
from llava_doctor import check_generation, reproduce  # noqa: E402
from llava_doctor.cli import main  # noqa: E402
from llava_doctor.core.builder import load_pretrained_model  # noqa: E402
from llava_doctor.registry import all_checks  # noqa: E402
from tests._transformers import needs  # noqa: E402

MAX_NEW_TOKENS = 12
GENERATION_CODES = ["LD501", "LD502", "LD503", "LD504"]


def has_check(code: str) -> bool:
    return code in all_checks()


def generate(*args: str):
    return CliRunner().invoke(main, ["generate", *args, "--max-new-tokens", str(MAX_NEW_TOKENS)])


@pytest.fixture(scope="session")
def core(tmp_path_factory):
    """(trained model, tokenizer, folder holding its base tower and its saved layouts)."""
    root = tmp_path_factory.mktemp("generate-core")
    model, tokenizer = models.trained_core(root)
    models.save_original(model, tokenizer, root / "original")
    models.save_hf_llava(model, tokenizer, root / "hf")
    return model, tokenizer, root


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate-images")
    paths = []
    for index, (fmt, suffix) in enumerate((("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"))):
        path = folder / f"held-out-{index}.{suffix}"
        models.held_out_images(index + 1)[index][1].save(path, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
        paths.append(path)
    return paths


def _pictures(count: int = 2):
    return [image for _, image in models.held_out_images(count)]


def _check(loaded, **kwargs):
    return check_generation(loaded.model, loaded.tokenizer, inputs_builder=loaded.inputs_builder(), images=_pictures(),
                            max_new_tokens=MAX_NEW_TOKENS, **kwargs)


def _broken(core, breaks, **kwargs):
    """The trained model loaded from its original-LLaVA folder, broken in memory by `breaks(model)`, checked."""
    loaded = load_pretrained_model(core[2] / "original")
    breaks(loaded.model)
    return _check(loaded, **kwargs)


# --------------------------------------------------------------------------- the healthy twin, two layouts


@pytest.mark.slow
def test_healthy_original_checkpoint_is_clean_and_answers_from_the_image(core, image_files):
    result = generate(str(core[2] / "original"), *[a for p in image_files for a in ("--image", str(p))], "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["findings"] == []
    samples = report["stats"]["generation"]["samples"]
    assert [s["text"] for s in samples[1:]] == [models.truth(1), models.truth(2)]  # JPEG and WebP read and resized
    for sample in samples:
        assert all(step["finite"] for step in sample["steps"]) and len(sample["steps"]) == len(sample["token_ids"])
        assert {n["image"] for n in sample["neutral"]} == {"blank", "noise"}
        assert not any(n["same_output"] for n in sample["neutral"])  # the answer depends on the picture
    assert report["stats"]["generation"]["family"] == "llava-original"


@pytest.mark.slow
def test_hf_llava_conversion_answers_like_the_original(core):
    original, hf = load_pretrained_model(core[2] / "original"), load_pretrained_model(core[2] / "hf")
    assert (original.family, original.conv_mode, hf.family) == ("llava-original", "core", "hf-llava")
    a, b = _check(original), _check(hf)
    assert [s["token_ids"] for s in a.stats["generation"]["samples"]] == [s["token_ids"] for s in b.stats["generation"]["samples"]]
    assert a.findings == b.findings == []
    prompt = b.stats["generation"]["samples"][0]["prompt_ids"]
    # the processor expands <image> to the tower's 16 patches; transformers 4.37's leaves that to the model
    assert prompt.count(models.IMAGE_TOKEN) == (16 if getattr(hf.processor, "patch_size", None) else 1)


# --------------------------------------------------------------------------- broken models


@pytest.mark.slow
def test_zeroed_projector_fires_ld504_naming_the_projector(core):
    report = _broken(core, models.zero_projector, live_checks=False)
    blind = report.by_code("LD504")
    assert len(blind) == 2 and all("projector's output (model.mm_projector) is near zero" in f.message for f in blind)
    assert report.stats["generation"]["likely_cause"] == \
        "image ignored: the projector does not carry the image to the answer (LD504)"


@pytest.mark.slow
def test_newly_initialised_projector_is_named_by_the_live_check(core):
    if not has_check("LD305"):
        pytest.skip("LD305 (live) is not in this build")
    report = _broken(core, models.random_projector)
    assert report.by_code("LD305") and not report.by_code("LD502")


@pytest.mark.slow
def test_a_head_without_weights_repeats_a_finite_token_ld501_not_ld502(core):
    report = _broken(core, models.zero_lm_head, live_checks=False)
    runs = report.by_code("LD501")
    assert len(runs) == 2 and "'<unk>' 12 times in a row from step 1" in runs[0].message
    assert not report.by_code("LD502") and not report.by_code("LD503")
    assert report.stats["generation"]["likely_cause"].startswith("the language model: the image features reach it")


@pytest.mark.slow
@pytest.mark.parametrize("dtype,broken", [("float16", True), ("bfloat16", False), ("float32", False)])
def test_fp16_overflow_on_hf_llava_names_the_module_and_dtype(core, dtype, broken):
    loaded = load_pretrained_model(core[2] / "hf", dtype=dtype)
    models.overflow_fp16(loaded.model, headroom=0.5)
    report = _check(loaded, live_checks=False)
    if not broken:  # the same weights answer in words (bfloat16 rounding may change a word, not the health)
        assert report.findings == [] and report.stats["generation"]["samples"][0]["text"]
        return
    (first, _) = report.by_code("LD503")
    projector = next(n for n, _ in loaded.model.named_modules() if n.endswith("multi_modal_projector.linear_2"))
    assert f"{projector} produced inf at step 1 in float16" in first.message  # model.multi_modal_projector in 5.x
    assert len(report.by_code("LD502")) == 2
    assert report.stats["generation"]["likely_cause"].startswith(f"fp16 overflow: {projector}")


@pytest.mark.slow
@needs("LlavaNextConfig")
def test_llava_next_folder_through_the_cli(core, tmp_path, image_files):
    tokenizer = core[1]
    healthy = models.tiny_next(tokenizer, tmp_path / "next")
    broken = models.tiny_next(tokenizer, tmp_path / "next-fp16", mutate=models.overflow_fp16)
    wide = tmp_path / "wide.jpg"
    models.held_out_images(1)[0][1].resize((64, 32)).save(wide)  # anyres: two tiles and the base image
    result = generate(str(healthy), "--image", str(wide), "--select", "LD502,LD503", "--format", "json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)["stats"]["generation"]
    assert record["family"] == "hf-llava-next" and record["samples"][0]["prompt_ids"].count(models.IMAGE_TOKEN) > 16
    result = generate(str(broken), "--image", str(wide), "--dtype", "float16", "--select", "LD502,LD503")
    assert result.exit_code == 1, result.output
    assert "LD502" in result.output and "first non-finite output: model.language_model.layers.0." in result.output
    assert "produced inf at step 1 in float16" in result.output


@pytest.mark.slow
@needs("LlavaOnevisionConfig")
def test_llava_onevision_in_memory(core):
    tokenizer = core[1]
    processor = models.onevision_processor(tokenizer)
    model = models.tiny_onevision()
    clean = check_generation(model, processor, images=_pictures(1), max_new_tokens=4, select=GENERATION_CODES[1:3])
    assert clean.findings == [] and clean.stats["generation"]["samples"][0]["token_ids"]
    models.overflow_fp16(model)
    report = check_generation(model.half(), processor, images=_pictures(1), max_new_tokens=4, select=GENERATION_CODES)
    (first,) = report.by_code("LD503")
    assert first.extra["dtype"] == "float16" and first.extra["module"].startswith("model.language_model.layers.0")


@pytest.mark.slow
def test_original_layout_with_a_real_tokenizer_builds_prompts_as_run_llava(tmp_path, tokenizers_dir):
    """An original-LLaVA folder with Vicuna's tokenizer: conv template inferred from the name, <image> as -200,
    <im_patch> added (mm_use_im_patch_token unset), 'pad' images squared with the processor's mean colour."""
    import shutil

    from llava_doctor.core import savers
    from llava_doctor.core.model import build_tiny_model

    model = build_tiny_model(tmp_path / "towers", pretrain_steps=0, vocab_size=32000, image_token_index=-200,
                             image_aspect_ratio="pad")
    folder = tmp_path / "llava-v1.5-tiny"
    savers.save_llava_original(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("mm_use_im_patch_token")
    savers.write_json(folder / "config.json", config)
    for name in os.listdir(tokenizers_dir / "vicuna-7b-v1.5"):
        shutil.copy(tokenizers_dir / "vicuna-7b-v1.5" / name, folder / name)
    loaded = load_pretrained_model(folder)
    assert loaded.conv_mode == "llava_v1" and loaded.tokenizer.convert_tokens_to_ids("<im_patch>") == 32000
    assert any("added <im_patch>" in note for note in loaded.load_report["notes"])
    wide = models.held_out_images(1)[0][1].resize((48, 32))
    report = check_generation(loaded.model, loaded.tokenizer, inputs_builder=loaded.inputs_builder(), images=[wide],
                              max_new_tokens=3, live_checks=False)
    sample = report.stats["generation"]["samples"][0]
    assert sample["prompt_ids"].count(-200) == 1 and sample["prompt_ids"][0] == loaded.tokenizer.bos_token_id
    assert len(sample["steps"]) == len(sample["token_ids"]) >= 1


@pytest.mark.slow
@pytest.mark.tokenizers
def test_hf_llava_with_a_real_tokenizer_on_this_transformers(tmp_path, tokenizers_dir):
    """A llava-hf style folder (Vicuna's tokenizer + <image>, no chat template) under the transformers that runs
    the tests: 4.37 (LLaVA's pin: the model expands <image>) or 5.x (the processor does)."""
    import transformers
    from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers_dir / "vicuna-7b-v1.5"), local_files_only=True)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                              patch_size=8, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
    LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id)
                                  ).save_pretrained(str(tmp_path))
    image_processor = models._pil("CLIPImageProcessor")(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expansion = {} if transformers.__version__.startswith("4.3") else dict(
        patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, **expansion).save_pretrained(str(tmp_path))
    loaded = load_pretrained_model(tmp_path)
    assert loaded.family == "hf-llava" and not loaded.load_report["missing_keys"]
    report = check_generation(loaded.model, loaded.processor, images=_pictures(1), max_new_tokens=3,
                              select=GENERATION_CODES[1:3])
    sample = report.stats["generation"]["samples"][0]
    assert report.findings == [] and 1 <= len(sample["token_ids"]) <= 3 and sample["probe"]["tower"]
    assert "llava-hf's documented 'USER: <image>\\n{prompt} ASSISTANT:'" in report.stats["generation"]["notes"][0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft -> transformers
def test_a_peft_wrapped_model_is_watched_through_its_wrapper(core):
    peft = pytest.importorskip("peft")
    loaded = load_pretrained_model(core[2] / "hf")
    plain = check_generation(loaded.model, loaded.processor, images=_pictures(1), max_new_tokens=MAX_NEW_TOKENS,
                             select=GENERATION_CODES, neutral=False)
    wrapped = peft.get_peft_model(loaded.model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    report = check_generation(wrapped, loaded.processor, images=_pictures(1), max_new_tokens=MAX_NEW_TOKENS,
                              select=GENERATION_CODES)
    sample = report.stats["generation"]["samples"][0]
    assert report.findings == [] and sample["text"] == plain.stats["generation"]["samples"][0]["text"]  # LoRA B is 0
    assert len(sample["steps"]) == len(sample["token_ids"]) and sample["probe"]["projector"].endswith("multi_modal_projector")


# --------------------------------------------------------------------------- the delay-load trap and fp16, as users meet them


@pytest.fixture(scope="session")
def scenario(tmp_path_factory):
    built = {}

    def get(name: str, fixed: bool):
        if (name, fixed) not in built:
            built[name, fixed] = reproduce.build(name, tmp_path_factory.mktemp(f"gen-{name}-{fixed}"), fixed=fixed)
        return built[name, fixed]

    return get


@pytest.mark.slow
def test_delay_load_checkpoint_generate_says_the_tower_is_random(scenario):
    if not has_check("LD304"):
        pytest.skip("LD304 (live) is not in this build")
    for fixed in (False, True):
        out = scenario("delay-load", fixed).out_dir
        result = generate(str(out / "checkpoint"), "--model-base", str(out / "base"), "--image", str(out / "image.png"),
                          "--format", "json")
        report = json.loads(result.output)
        codes = {f["code"] for f in report["findings"]}
        if fixed:
            assert result.exit_code == 0 and not codes, result.output
        else:
            assert result.exit_code == 1 and "LD304" in codes, result.output
            assert any("loaded eagerly" in note for note in report["stats"]["generation"]["notes"])


@pytest.mark.slow
def test_nan_logits_scenario_cli(scenario):  # the demo table for it: tests/test_demo.py
    broken, fixed = scenario("nan-logits", False).out_dir, scenario("nan-logits", True).out_dir
    result = generate(str(broken / "model"), "--image", str(broken / "image.png"))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"{broken / 'image.png'} / 'Describe the image.' (float16, {MAX_NEW_TOKENS} tokens): ''")
    assert "LD502" in result.output and "LD503" in result.output and "LD504" not in result.output
    assert "most likely cause: fp16 overflow:" in result.output
    assert generate(str(fixed / "model"), "--image", str(fixed / "image.png")).exit_code == 0
    result = generate(str(broken / "model"), "--image", str(broken / "image.png"), "--dtype", "bfloat16", "--format", "json",
                      "--select", "LD5")
    assert result.exit_code == 0 and json.loads(result.output)["findings"] == [], result.output


# --------------------------------------------------------------------------- usage errors: one line, exit 2


def test_bad_inputs_are_one_line_exit_2(tmp_path):
    not_image = tmp_path / "image.png"
    not_image.write_text("GIF89a")
    result = generate(str(tmp_path / "missing"), "--image", str(not_image))  # the image is read first
    assert result.exit_code == 2 and "not an image llava-doctor can read (JPEG, PNG or WebP)" in result.output
    models.held_out_images(1)[0][1].save(not_image)
    result = generate(str(tmp_path / "missing"), "--image", str(not_image))
    assert result.exit_code == 2 and "not a checkpoint directory" in result.output and "Traceback" not in result.output
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = generate(str(tmp_path), "--image", str(not_image))
    assert result.exit_code == 2 and "model_type 'bert' is not a LLaVA-family model" in result.output


@pytest.mark.slow
def test_missing_tokenizer_and_model_base_name_what_to_pass(core, tmp_path, image_files):
    model, _, root = core
    from llava_doctor.core import savers

    savers.save_llava_original(model, tmp_path / "no-tokenizer")
    result = generate(str(tmp_path / "no-tokenizer"), "--image", str(image_files[0]))
    assert result.exit_code == 2 and "no tokenizer" in result.output and "pass --tokenizer DIR" in result.output
    result = generate(str(tmp_path / "no-tokenizer"), "--image", str(image_files[0]), "--tokenizer", str(root / "original"))
    assert result.exit_code == 0, result.output
    savers.save_llava_original(model, tmp_path / "projector", stage="pretrain")
    result = generate(str(tmp_path / "projector"), "--image", str(image_files[0]))
    assert result.exit_code == 2 and "pass --model-base DIR" in result.output
    hf = tmp_path / "hf-without-tokenizer"
    hf.mkdir()
    for item in (root / "hf").iterdir():
        if not item.name.startswith("tokenizer"):
            (hf / item.name).symlink_to(item)
    assert generate(str(hf), "--image", str(image_files[0])).exit_code == 2
    result = generate(str(hf), "--image", str(image_files[0]), "--tokenizer", str(root / "hf"))
    assert result.exit_code == 0 and sorted(p.name for p in hf.iterdir()) == sorted(
        p.name for p in (root / "hf").iterdir() if not p.name.startswith("tokenizer")), result.output
    result = generate(str(root / "original"), "--image", str(image_files[0]), "--conv-mode", "nonsense")
    assert result.exit_code == 2 and "--conv-mode 'nonsense': unknown" in result.output


# --------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.slow
def test_check_generation_on_cuda(core):
    loaded = load_pretrained_model(core[2] / "hf", device="cuda", dtype="bfloat16")
    report = _check(loaded)
    assert report.findings == [] and report.stats["generation"]["device"].startswith("cuda")
    loaded = load_pretrained_model(core[2] / "hf", device="cuda", dtype="float16")
    models.overflow_fp16(loaded.model, headroom=0.5)
    report = _check(loaded, live_checks=False)
    assert report.by_code("LD503") and report.by_code("LD502")


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_hub_style_full_clip_folder_loads_as_the_tower(tmp_path, weights):
    """mm_vision_tower naming a full CLIP folder (openai/clip-vit-* in the hub cache: model_type clip, the text
    half too, pytorch_model.bin in older snapshots): the tower is its vision half, with its own image processor."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from llava_doctor.core.vision import VisionTower

    torch.manual_seed(0)
    config = CLIPConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                           image_size=32, patch_size=8),
                        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                        projection_dim=16)
    full = CLIPModel(config)
    full.config.save_pretrained(str(tmp_path))
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    if weights.endswith(".bin"):
        torch.save(state, tmp_path / weights)
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp_path / weights))
    models._pil("CLIPImageProcessor")(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(tmp_path))
    tower = VisionTower(tmp_path, config, delay_load=True)
    assert not tower.is_loaded
    tower.load_model()
    mine = {k.removeprefix("vision_model."): v for k, v in tower.vision_tower.state_dict().items()}
    theirs = {k.removeprefix("vision_model."): v for k, v in full.vision_model.state_dict().items()}
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert tower.image_processor.crop_size == {"height": 32, "width": 32} and tower.image_processor.image_mean[0] != 0.5
