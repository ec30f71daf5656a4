"""The generation checks' logic without models: LD501's metrics and defaults (properties, real tokenizers'
normal sentences), LD504's silent part, the cause line, bounded image reading, LLaVA's prompt pieces."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_doctor.artifacts.generation import NonFinite, likely_cause
from llava_doctor.artifacts.model_inputs import (expand_to_square, infer_conv_mode,
                                                 question_with_image, tokenizer_image_token)
from llava_doctor.checks._generation_examples import ANSWER, PROBE, generation, neutral, sample
from llava_doctor.checks.ld501_degenerate_repetition import (degenerate, distinct, longest_loop, longest_run,
                                                             seq_rep)
from llava_doctor.checks.ld504_image_ignored import image_blind, silent_part
from llava_doctor.findings import Finding, InputError, Severity
from llava_doctor.tower_loading import loader_model_name
from llava_doctor.images import neutral_images, read_image

# Short answers of the kind a captioning model gives, with repeated words, numbers and punctuation.
NORMAL_SENTENCES = (
    "A red circle at the top left.",
    "The image shows a dog sitting on a wooden bench in a park.",
    "There are two cats on the sofa, and one of them is asleep.",
    "It is a photo of a street at night with cars and lights.",
    "The sign says: Welcome to the city of San Francisco!",
    "A man is riding a bicycle down a hill next to the sea.",
    "The chart shows sales rising from 1,000 in 2019 to 25,000 in 2023.",
    "The woman is holding an umbrella because it is raining.",
    "I see a plate with pasta, tomatoes, basil and cheese.",
    "The text reads 'Open 9am - 5pm, Monday to Friday'.",
    "Yes, there is a clock on the wall; it shows ten past three.",
    "The boy in the blue shirt is throwing a ball to the dog.",
    "No, the door is closed and the window is open.",
    "The room has a bed, a desk, a lamp and a large window.",
    "Three birds sit on the wire above the old red barn.",
    "The price is $12.99 per kilogram.",
)


# --------------------------------------------------------------------------- LD501 metrics


def test_metrics_on_known_sequences():
    assert longest_run([5, 6, 6, 6, 7]) == (1, 3) and longest_run([]) == (0, 0)
    assert longest_loop([1, 2, 7, 9, 7, 9, 7, 9, 3]) == (2, 2, 3)
    assert longest_loop([4, 4, 4, 4]) == (0, 0, 0)  # a run of one token is longest_run's
    assert seq_rep([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(1 - 4 / 5)
    assert seq_rep([1, 2, 3]) == 0.0 and distinct([1]) == 1.0
    assert distinct([1, 2, 1, 2, 1, 2], 2) == pytest.approx(2 / 5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=96).filter(lambda ids: all(ids.count(t) <= 2 for t in set(ids))))
def test_answers_where_no_token_appears_three_times_never_fire(ids):
    assert degenerate(ids) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 99), max_size=20), st.integers(0, 99), st.integers(8, 30), st.lists(st.integers(0, 99), max_size=20))
def test_a_run_of_eight_fires(prefix, token, length, suffix):
    found = degenerate(prefix + [token] * length + suffix)
    assert found is not None and found.run >= length


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 99), min_size=2, max_size=8, unique=True), st.integers(4, 8), st.lists(st.integers(100, 199), max_size=10))
def test_a_loop_of_four_repeats_fires(unit, repeats, prefix):
    found = degenerate(prefix + unit * repeats)
    assert found is not None and found.count * found.unit >= len(unit) * repeats


def _tokenizer(tokenizers_dir, name):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizers_dir / name), local_files_only=True)


@pytest.mark.tokenizers
@pytest.mark.parametrize("name", ["Llama-2-7b-chat-hf", "Qwen2-7B-Instruct", "Meta-Llama-3-8B-Instruct"])
def test_normal_sentences_of_real_tokenizers_never_fire(tokenizers_dir, name):
    tokenizer = _tokenizer(tokenizers_dir, name)
    encoded = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in NORMAL_SENTENCES]
    for one in encoded:
        assert degenerate(one) is None, tokenizer.decode(one)
    for first, second, third in zip(encoded, encoded[1:] + encoded[:1], encoded[2:] + encoded[:2]):
        assert degenerate(first + second + third) is None, tokenizer.decode(first + second + third)


@pytest.mark.tokenizers
def test_degenerate_answers_of_a_real_tokenizer_fire_naming_the_text(tokenizers_dir):
    from llava_doctor.api import check_generation
    from llava_doctor.artifacts.generation import decode_pieces

    tokenizer = _tokenizer(tokenizers_dir, "Qwen2-7B-Instruct")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # what a looping model emits: the unit's ids again and again (not the tokenization of the repeated text)
    for prefix, unit, times in (("The image shows", " the cat", 10), ("", "!", 12), ("A dog", " dog", 9)):
        ids = encode(prefix) + encode(unit) * times
        repeated = unit
        built = generation(ids, pieces=decode_pieces(tokenizer, ids))()
        (finding,) = check_generation(generation=built, select=["LD501"]).findings
        assert f"{repeated!r}" in finding.message and "finite logits" in finding.message


def test_thresholds_are_options():
    from llava_doctor.api import check_generation

    built = generation((5, 6, 7, 7, 7, 7, 7, 9, 2))()
    assert check_generation(generation=built, select=["LD501"]).findings == []
    strict = check_generation(generation=built, select=["LD501"], options={"max_run": 5})
    assert [f.code for f in strict.findings] == ["LD501"]


# --------------------------------------------------------------------------- LD504 logic


def test_image_blind_needs_every_neutral_image_and_close_distributions():
    assert image_blind(sample(neutral_answers=neutral(same=True, tv=0.0)))
    assert not image_blind(sample(neutral_answers=neutral(same=True, tv=0.2)))
    assert not image_blind(sample(neutral_answers=neutral(same=True, tv=0.0)[:1] + neutral()[1:]))
    assert not image_blind(sample(neutral_answers=()))


def test_silent_part_follows_the_image_path_in_order():
    blind = neutral(same=True, tv=0.0)
    assert silent_part(sample(neutral_answers=neutral(same=True, tower=0.0, projector=0.0, sequence=0.0)))[0] == "vision tower"
    assert silent_part(sample(neutral_answers=neutral(same=True, projector=0.0, sequence=0.0)))[0] == "projector"
    assert silent_part(sample(neutral_answers=blind, probe=replace(PROBE, projector_rms=1e-5)))[0] == "projector"
    assert silent_part(sample(neutral_answers=neutral(same=True, sequence=0.0)))[0] == "splice"
    assert silent_part(sample(neutral_answers=blind))[0] == "language model"
    assert silent_part(sample(neutral_answers=blind, probe=None))[0] == "unknown"


# --------------------------------------------------------------------------- the cause line


def _finding(code: str, **extra) -> Finding:
    return Finding(code=code, severity=Severity.ERROR, message="m", artifact="a", location="loc", extra=extra)


def test_likely_cause_ranks_overflow_tower_projector_image():
    fp16 = generation((0,) * 4, nonfinite=range(1, 5), module="model.layers.1.mlp.down_proj", value="inf")()
    assert likely_cause(fp16, [_finding("LD502"), _finding("LD503")]).startswith("fp16 overflow: model.layers.1.mlp.down_proj")
    tower = replace(fp16, samples=(replace(fp16.samples[0], first_nonfinite=NonFinite("model.vision_tower.encoder", 1, "nan")),))
    assert likely_cause(tower, [_finding("LD503")]).startswith("vision tower not loaded or holding garbage")
    fluent = generation(ANSWER)()
    assert likely_cause(fluent, [_finding("LD304")]) is None  # nothing degenerate: no cause line
    assert likely_cause(fluent, [_finding("LD501"), _finding("LD304")]).startswith("vision tower not loaded or random")
    assert likely_cause(fluent, [_finding("LD504", silent_part="projector"), _finding("LD305")]).startswith(
        "projector newly initialised")
    assert likely_cause(fluent, [_finding("LD504", silent_part="projector")]) == \
        "image ignored: the projector does not carry the image to the answer (LD504)"
    assert "repeats on its own" in likely_cause(fluent, [_finding("LD501")], live_checked=True)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_reads_png_jpeg_webp_as_rgb(tmp_path, fmt, suffix):
    from PIL import Image

    path = tmp_path / f"picture.{suffix}"
    Image.new("RGBA" if fmt != "JPEG" else "RGB", (40, 24), (200, 10, 10)).save(path, fmt)
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (40, 24)


def test_image_errors_are_one_line(tmp_path):
    from PIL import Image

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match=r"notes.png: not an image llava-doctor can read \(JPEG, PNG or WebP\)"):
        read_image(text)
    big = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(big)  # a few KB compressed, 9 M pixels
    with pytest.raises(InputError, match=r"3000x3000 = 9,000,000 pixels, more than the 1,000,000-pixel limit"):
        read_image(big, max_pixels=1_000_000)
    cut = tmp_path / "cut.jpg"
    neutral_images((64, 64))["noise"].save(cut, "JPEG")
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    with pytest.raises(InputError, match="cut.jpg: corrupt or truncated JPEG image"):
        read_image(cut)
    with pytest.raises(InputError, match="not a regular image file"):
        read_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="a FIFO"):
        read_image(fifo)


def test_neutral_images_have_the_image_size():
    images = neutral_images((33, 17))
    assert {name: (im.size, im.mode) for name, im in images.items()} == {"blank": ((33, 17), "RGB"), "noise": ((33, 17), "RGB")}
    import numpy as np

    assert np.asarray(images["noise"]).std() > 50 and np.asarray(images["blank"]).std() == 0


# --------------------------------------------------------------------------- LLaVA's prompt pieces


def test_conv_mode_inference_follows_run_llava():
    assert infer_conv_mode("llava-v1.5-7b") == "llava_v1"
    assert infer_conv_mode("llava-v1.6-34b") == "chatml_direct"
    assert infer_conv_mode("llava-llama-2-13b-chat") == "llava_llama_2"
    assert infer_conv_mode("llava-v1.6-mistral-7b") == "mistral_instruct"
    assert infer_conv_mode("my-model", {"architectures": ["LlavaQwenForCausalLM"]}) == "qwen_1_5"
    assert infer_conv_mode("checkpoint") == "llava_v0"
    assert loader_model_name("/runs/llava-v1.5-7b/checkpoint-500/") == "llava-v1.5-7b_checkpoint-500"
    assert question_with_image("What is it?") == "<image>\nWhat is it?"
    assert question_with_image("Compare <image> with the text", im_start_end=True) == \
        "Compare <im_start><image><im_end> with the text"


@pytest.mark.tokenizers
def test_tokenizer_image_token_matches_llava(tokenizers_dir):
    tokenizer = _tokenizer(tokenizers_dir, "vicuna-7b-v1.5")
    ids = tokenizer_image_token("USER: <image>\nWhat is it? ASSISTANT:", tokenizer)
    assert ids[0] == tokenizer.bos_token_id and ids.count(-200) == 1 and ids.count(tokenizer.bos_token_id) == 1
    at = ids.index(-200)
    assert ids[1:at] == tokenizer("USER: ").input_ids[1:]
    assert ids[at + 1:] == tokenizer("\nWhat is it? ASSISTANT:").input_ids[1:]


def test_expand_to_square_pads_with_the_mean_colour():
    from PIL import Image

    square = expand_to_square(Image.new("RGB", (40, 20), (255, 255, 255)), (122, 116, 104))
    assert square.size == (40, 40) and square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((20, 20)) == (255, 255, 255)


# --------------------------------------------------------------------------- the loader's references, before any weights


def test_mm_vision_tower_resolves_through_the_local_hub_cache_only(tmp_path, monkeypatch):
    import json

    from llava_doctor.core.builder import resolve_vision_tower

    snapshot = tmp_path / "hub" / "models--openai--clip-tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (tmp_path / "hub" / "models--openai--clip-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--openai--clip-tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_vision_tower("openai/clip-tiny", tmp_path) == str(snapshot)
    local = tmp_path / "towers" / "mine"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    assert resolve_vision_tower("towers/mine", tmp_path) == str(local)  # relative to the checkpoint
    with pytest.raises(InputError, match=r"mm_vision_tower 'openai/clip-vit-large-patch14-336' .* is neither a local "
                                         r"folder nor a model in the local Hugging Face cache"):
        resolve_vision_tower("openai/clip-vit-large-patch14-336", tmp_path)


def test_anyres_original_checkpoints_are_refused_before_loading(tmp_path):
    import json

    from llava_doctor.core.builder import load_pretrained_model

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "mm_vision_tower": "openai/clip",
        "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad"}))
    with pytest.raises(InputError, match="image_aspect_ratio 'anyres' .* is not implemented"):
        load_pretrained_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlavaMptForCausalLM"], "mm_vision_tower": "x"}))
    with pytest.raises(InputError, match="architecture 'LlavaMptForCausalLM'"):
        load_pretrained_model(tmp_path)
