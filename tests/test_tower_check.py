"""LD304: the delay-load trap predicted from a checkpoint's config (no --deep), and a random tower caught with --deep."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from llava_doctor.api import audit  # noqa: E402


def _projector_only(root, *, fixed: bool):
    """The delay-load scenario's artifact, written by its own functions from an untrained tiny model: LLaVA-NeXT's
    pretrain output (config.json without delay_load + mm_projector.bin) and the base LLM (`--model-base`);
    then loaded as LLaVA-NeXT's load_pretrained_model does (the bundled core's builder)."""
    import torch

    from llava_doctor.core.builder import load_pretrained_model
    from llava_doctor.core.model import build_tiny_model
    from llava_doctor.core.tokenizer import load_tokenizer
    from llava_doctor.core.vision import read_tower_weights
    from llava_doctor.reproduce.delay_load import write_base_llm, write_projector_checkpoint

    model = build_tiny_model(root / "towers", pretrain_steps=0)
    base = write_base_llm(model, load_tokenizer(), root / "base")
    config = write_projector_checkpoint(model, root / "checkpoint", fixed=fixed)
    loaded = load_pretrained_model(root / "checkpoint", model_base=base)
    current = loaded.model.get_vision_tower().vision_tower.state_dict()
    reference = read_tower_weights(config["mm_vision_tower"], list(current))  # keyed as this transformers names them
    assert reference.keys() == current.keys()
    return root / "checkpoint", config, all(torch.equal(current[k], v) for k, v in reference.items())


@pytest.fixture(scope="module")
def projector_only(tmp_path_factory):
    return {fixed: _projector_only(tmp_path_factory.mktemp("fixed" if fixed else "broken"), fixed=fixed)
            for fixed in (False, True)}


@pytest.mark.slow
def test_audit_without_deep_predicts_the_random_tower(projector_only):
    """LLaVA-NeXT config without delay_load, no tower weights: the loaded tower is not the base, and audit says so."""
    checkpoint, _, tower_is_base = projector_only[False]
    assert tower_is_base is False  # what the loader really did
    report = audit([checkpoint])  # no --deep: nothing is read but the config and the headers
    found = report.by_code("LD304")
    assert len(found) == 1, [f.message for f in report.findings]
    assert str(found[0].severity) == "error" and "delay_load is unset" in found[0].message
    assert "uninitialised" in found[0].message and "'!!!!'" in found[0].message
    assert not [f for f in report.by_code("LD202") if f.extra.get("component") == "vision_tower"]  # said once


@pytest.mark.slow
def test_fixed_twin_is_delay_loaded_from_the_base_tower(projector_only):
    checkpoint, config, tower_is_base = projector_only[True]
    assert tower_is_base is True
    report = audit([checkpoint])
    assert report.by_code("LD304") == []
    tower = [f for f in report.by_code("LD202") if f.extra.get("component") == "vision_tower"]
    assert len(tower) == 1 and str(tower[0].severity) == "info", [f.message for f in tower]
    assert "delay-loads it (delay_load is true)" in tower[0].message
    assert f"from the local folder {config['mm_vision_tower']}" in tower[0].message


def _saved_with_tower(out, *, random_tower: bool):
    """A bundled-core LLaVA saved with its frozen tower (mm_vision_tower = the base tower folder); optionally
    the tower randomly re-initialised first, as transformers does for weights a checkpoint lacks."""
    import torch

    from llava_doctor.core import savers
    from llava_doctor.core.model import build_tiny_model

    model = build_tiny_model(out / "towers", pretrain_steps=0)
    if random_tower:
        with torch.no_grad():
            for param in model.get_vision_tower().vision_tower.parameters():
                param.normal_(0.0, 0.02)
    return savers.save_llava_original(model, out / "ckpt")


@pytest.fixture(scope="module")
def saved_towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {kind: _saved_with_tower(root / kind, random_tower=kind == "random") for kind in ("random", "base")}


def test_deep_comparison_catches_a_random_frozen_tower(saved_towers):
    found = audit([saved_towers["random"]], deep=True, select=("LD304",)).by_code("LD304")
    reference = json.loads((saved_towers["random"] / "config.json").read_text())["mm_vision_tower"]
    assert len(found) == 1 and f"differ from the base tower at {reference}" in found[0].message
    assert audit([saved_towers["base"]], deep=True, select=("LD304",)).by_code("LD304") == []


def test_the_comparison_needs_deep(saved_towers):
    assert audit([saved_towers["random"]], select=("LD304",)).by_code("LD304") == []


def test_hub_reference_is_not_guessed(saved_towers, tmp_path):
    """mm_vision_tower naming no local folder: nothing to compare with, no finding."""
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(saved_towers["random"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (copy / "config.json").write_text(json.dumps(config))
    assert audit([copy], deep=True, select=("LD304",)).by_code("LD304") == []


@pytest.mark.parametrize("config,folder,eager,why", [
    ({"mm_vision_tower": "openai/clip"}, "/x/llava-lora", False, "LLaVA always delay-loads a frozen tower"),
    ({"mm_vision_tower": "openai/clip", "unfreeze_mm_vision_tower": True}, "/x/m", True, "unfreeze_mm_vision_tower"),
    ({"mm_vision_tower": "google/siglip", "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter"}, "/x/m", True,
     "mm_tunable_parts holds mm_vision_tower"),
    ({"mm_vision_tower": "google/siglip", "mm_tunable_parts": "mm_mlp_adapter"}, "/x/llava-next-ov", True,
     "delay_load is unset"),
    ({"mm_vision_tower": "google/siglip", "mm_tunable_parts": "mm_mlp_adapter"}, "/x/llava-v1.5-7b/checkpoint-500", False,
     "llava-v1.5-7b_checkpoint-500"),
    ({"mm_vision_tower": "google/siglip", "delay_load": True}, "/x/m", False, "delay_load is true"),
])
def test_the_loader_plan_follows_llava_and_llava_next(config, folder, eager, why):
    from llava_doctor.tower_loading import tower_load

    plan = tower_load(config, root=folder)
    assert plan.eager is eager and why in plan.why, plan


def test_tower_references_resolve_as_the_builder_takes_them(tmp_path):
    from llava_doctor.tower_loading import resolves

    assert resolves(str(tmp_path), None, "LLaVA") == "local"
    assert resolves("openai/clip-vit-large-patch14-336", None, "LLaVA") == "hub"
    assert resolves("google/siglip-so400m-patch14-384", None, "LLaVA") == "unknown"  # `ValueError: Unknown vision tower`
    assert resolves("google/siglip-so400m-patch14-384", None, "LLaVA-NeXT") == "hub"
    assert resolves("/data/train-node/clip", None, "LLaVA-NeXT") == "unknown"
