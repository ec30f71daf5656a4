"""The live checks on real broken models and their fixed twins: the bundled core (original-LLaVA tree), XTuner's
tree, transformers' Llava / LlavaNext / OneVision, PEFT; and `llava-doctor inspect` on checkpoints as loaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import llava_doctor
from _live_models import core_llava, eager_tower_reload, tower_folder
from llava_doctor.checks._live_examples import (
    freeze, hf_llava, hf_part, quiet_load, trained_projector,
)
from llava_doctor.core import savers
from llava_doctor.core.builder import transformers_major
from llava_doctor.core.stages import apply_stage
from tests._transformers import needs


def codes(report, *wanted):
    return sorted(f.code for f in report.findings if f.code in wanted and f.severity > llava_doctor.Severity.INFO)


def messages(report, code):
    return [f.message for f in report.findings if f.code == code]


def trained(model, part: str, steps: int = 2):
    """A few real optimizer steps on one part of a transformers Llava (a regression on its own output), so that it
    no longer holds an init."""
    module = hf_part(model, part)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        output = module(pixels).last_hidden_state
        loss = (output - 1.0).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


# ----------------------------------------------------------------------------- LD301


def test_llm_left_trainable_in_pretrain_and_its_frozen_twin():
    broken = llava_doctor.inspect(core_llava(tune_mm_mlp_adapter=True))
    assert codes(broken, "LD301") == ["LD301", "LD301"]
    assert any(m.startswith("language_model: ") and "stage pretrain (inferred: tune_mm_mlp_adapter is set)" in m
               for m in messages(broken, "LD301"))
    fixed = llava_doctor.inspect(apply_stage(core_llava(), "pretrain"))
    assert fixed.stats["live"]["stage"] == "pretrain" and codes(fixed, "LD301") == []


def _llava_next_tunable_parts(model, *, fixed: bool):
    """LLaVA-NeXT train.py with lora_enable and mm_tunable_parts: before bfbba5a every LLM parameter was switched
    on for mm_language_model (LoRA's base weights included); after it only the LoRA parameters are."""
    parts = model.config.mm_tunable_parts.split(",")
    model.requires_grad_(False)
    for name, param in model.named_parameters():
        if "mm_mlp_adapter" in parts and "mm_projector" in name:
            param.requires_grad_(True)
        if "mm_vision_tower" in parts and "vision_tower" in name:
            param.requires_grad_(True)
        if "mm_language_model" in parts and not any(k in name for k in ("vision_tower", "mm_projector", "vision_resampler")):
            param.requires_grad_("lora_" in name if fixed else True)
    return model


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
@pytest.mark.parametrize("fixed", [False, True])
def test_lora_with_mm_tunable_parts_trains_everything(fixed):
    model = core_llava(mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model")
    model = _llava_next_tunable_parts(savers.wrap_lora(model), fixed=fixed)
    report = llava_doctor.inspect(model, select=["LD301"])
    assert report.stats["live"]["stage"] == "lora"
    if fixed:
        assert report.findings == []
        return
    assert codes(report, "LD301") == ["LD301", "LD301"]
    language = next(m for m in messages(report, "LD301") if m.startswith("language_model"))
    assert "through its LoRA adapters only" in language and ".base_layer.weight" in language


@needs("LlavaNextConfig")
def test_llava_next_pretrain_with_the_llm_trainable():
    broken = llava_doctor.inspect(freeze(hf_llava(family="llava_next"), "multi_modal_projector", "language_model",
                                         "image_newline"), stage="pretrain", select=["LD301"])
    assert [m.split(":")[0] for m in messages(broken, "LD301")] == ["language_model"]
    fixed = llava_doctor.inspect(freeze(hf_llava(family="llava_next"), "multi_modal_projector", "image_newline"),
                                 stage="pretrain", select=["LD301"])
    assert fixed.findings == []


# ----------------------------------------------------------------------------- LD303


def test_trainable_parameters_left_out_of_the_optimizer_and_the_twin():
    model = apply_stage(core_llava(), "finetune")
    model.get_model().mm_projector.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)  # built too early
    model.get_model().mm_projector.requires_grad_(True)
    report = llava_doctor.inspect(model, optimizer=optimizer, select=["LD303"])
    assert len(report.findings) == 1 and report.findings[0].message.startswith("projector: 4 trainable tensor(s) are not in")
    twin = apply_stage(core_llava(), "finetune")
    optimizer = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], lr=1e-3)
    assert llava_doctor.inspect(twin, optimizer=optimizer, select=["LD303"]).findings == []


# ----------------------------------------------------------------------------- LD304


def test_tower_delay_loaded_and_never_loaded():
    report = llava_doctor.inspect(core_llava(delay_load=True, load=False), select=["LD304"])
    assert len(report.findings) == 1 and "is_loaded is False (built with delay_load" in report.findings[0].message
    assert llava_doctor.inspect(core_llava(delay_load=True), select=["LD304"]).findings == []


@pytest.mark.transformers5  # 4.x leaves uninitialised memory, not a fresh init (test_tower_materialised_without_values)
def test_tower_loaded_eagerly_into_meta_memory_from_a_checkpoint_without_tower_weights():
    report = llava_doctor.inspect(eager_tower_reload(), select=["LD304"])
    assert len(report.findings) == 1
    message = report.findings[0].message
    assert "tensors differ from the base tower at" in message and "fresh normal(0, 0.02) initialisation" in message


@pytest.mark.parametrize("fill,shown", [(float("nan"), "NaN / 0 Inf"), (0.0, "max |x| 0")])
def test_tower_materialised_without_values(fill, shown):
    """A tower left as `to_empty` materialised it (accelerate's init_empty_weights + no load): whatever the freed
    memory held, NaN/-inf (transformers 4.37, measured) or fresh zero pages."""
    model = core_llava()
    tower = model.get_vision_tower().vision_tower
    tower.to_empty(device="cpu")
    with torch.no_grad():
        for param in tower.parameters():
            param.fill_(fill)
    found = messages(llava_doctor.inspect(model, select=["LD304"]), "LD304")
    assert len(found) == 1 and found[0].startswith("vision_tower holds garbage: ") and shown in found[0]


@needs("LlavaOnevisionConfig")
def test_onevision_tower_fresh_init_without_a_base_and_its_trained_twin():
    report = llava_doctor.inspect(hf_llava(family="llava_onevision"), select=["LD304"])
    assert len(report.findings) == 1 and "48 of 48 tensors have the statistics of a fresh initialisation" in report.findings[0].message
    twin = trained(hf_llava(family="llava_onevision"), "vision_tower")
    assert llava_doctor.inspect(twin, select=["LD304"]).findings == []


def test_tower_against_a_base_given_as_a_checkpoint_or_a_module(tmp_path):
    base = trained(hf_llava(), "vision_tower")
    quiet_load(lambda: base.save_pretrained(str(tmp_path / "base")))
    assert llava_doctor.inspect(base, base=tmp_path / "base", select=["LD304"]).findings == []  # 4.x/5.x keys pair
    found = messages(llava_doctor.inspect(hf_llava(seed=1), base=base, select=["LD304"]), "LD304")
    assert len(found) == 1 and "of 39 tensors differ from the base tower at base" in found[0]
    assert "its values are a fresh initialisation of its class" in found[0]


def test_tower_stored_in_fp16_and_loaded_as_bf16_is_still_the_fp32_base(tmp_path):
    """A frozen tower that went through an fp16 save and a bf16 load equals its fp32 base up to storage rounding."""
    base = trained(hf_llava(), "vision_tower")
    quiet_load(lambda: base.save_pretrained(str(tmp_path / "base")))
    tower = hf_part(base, "vision_tower")
    with torch.no_grad():
        for param in tower.parameters():
            param.copy_(param.to(torch.float16).to(torch.bfloat16).float())
    assert llava_doctor.inspect(base, base=tmp_path / "base", select=["LD304"]).findings == []
    tower.to(torch.bfloat16)
    assert llava_doctor.inspect(base, base=tmp_path / "base", select=["LD304"]).findings == []


def test_siglip_checkpoint_inside_a_clip_class(tmp_path):
    """LLaVA-NeXT picks CLIPVisionTower for a local SigLIP path; the CLIP class then holds SigLIP weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = core_llava(vision="siglip")
    folder = tower_folder("siglip")
    siglip_config = json.loads(Path(folder, "config.json").read_text())
    clip = quiet_load(lambda: CLIPVisionModel(CLIPVisionConfig(**{k: siglip_config[k] for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")})))
    model.get_vision_tower().vision_tower = clip.requires_grad_(False)
    report = llava_doctor.inspect(model, select=["LD304"])
    assert any("vision tower is a CLIPVisionModel but mm_vision_tower" in m and "is a SIGLIP checkpoint" in m
               for m in messages(report, "LD304"))
    assert not any("SIGLIP" in m for m in messages(llava_doctor.inspect(core_llava(vision="siglip"), select=["LD304"]), "LD304"))


# ----------------------------------------------------------------------------- LD305


@pytest.fixture(scope="module")
def pretrain_adapter(tmp_path_factory):
    """mm_projector.bin of a pretraining run (the projector really trained), as LLaVA's trainer saves it."""
    folder = tmp_path_factory.mktemp("pretrain")
    savers.save_llava_original(trained_projector(core_llava()), folder, stage="pretrain")
    return folder / "mm_projector.bin"


def test_a_projector_that_never_got_its_mm_projector_bin(pretrain_adapter):
    broken = llava_doctor.inspect(core_llava(), stage="finetune", pretrain_mm_mlp_adapter=pretrain_adapter, select=["LD305"])
    found = messages(broken, "LD305")
    assert len(found) == 2
    assert any(m.startswith("projector: 4 of 4 tensors differ from pretrain_mm_mlp_adapter") for m in found)
    assert any("PyTorch's default nn.Linear init" in m for m in found)
    twin = core_llava()
    weights = torch.load(pretrain_adapter, weights_only=True)  # LLaVA's initialize_vision_modules: get_w + strict load
    twin.get_model().mm_projector.load_state_dict({k.split("mm_projector.")[1]: v for k, v in weights.items()})
    fixed = llava_doctor.inspect(twin, stage="finetune", pretrain_mm_mlp_adapter=pretrain_adapter, select=["LD305"])
    assert fixed.findings == []


def test_xtuner_projector_fresh_at_finetune_and_trained_twin():
    from llava_doctor.core.xtuner import build_tiny_xtuner

    fresh = build_tiny_xtuner(tower_folder(), freeze_llm=False)  # no pretrained_pth: the projector is as built
    report = llava_doctor.inspect(fresh, select=["LD305"])
    assert report.stats["live"]["stage"] == "finetune"
    assert len(report.findings) == 1 and "projector.model.0.weight" in report.findings[0].message
    twin = build_tiny_xtuner(tower_folder(), freeze_llm=False)
    trained_projector_of(twin.projector)
    assert llava_doctor.inspect(twin, select=["LD305"]).findings == []


def trained_projector_of(projector):
    wrapper = torch.nn.Module()
    wrapper.mm_projector = projector.model
    trained_projector(wrapper)


# ----------------------------------------------------------------------------- LD203, LD204


def test_tokenizer_grown_past_the_embedding_and_the_resized_twin():
    from llava_doctor.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    tokenizer.add_tokens(["<im_start>", "<im_end>", "<im_patch>"], special_tokens=True)
    model = core_llava()
    report = llava_doctor.inspect(model, tokenizer=tokenizer, select=["LD203"])
    rows = model.get_model().embed_tokens.weight.shape[0]
    assert messages(report, "LD203") == [f"model.embed_tokens.weight: {rows} embedding rows but the tokenizer has {len(tokenizer)} "
                                         f"tokens; expected at least {len(tokenizer)} rows: ids {rows}..{len(tokenizer) - 1} "
                                         f"index past the table"]
    model.resize_token_embeddings(len(tokenizer))
    assert llava_doctor.inspect(model, tokenizer=tokenizer, select=["LD203"]).findings == []


def test_nan_in_weights_and_gradients_after_a_real_backward():
    model = apply_stage(core_llava(), "finetune")
    with torch.no_grad():
        model.get_model().embed_tokens.weight[5, 0] = float("inf")
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    model(input_ids=ids, labels=ids).loss.backward()
    report = llava_doctor.inspect(model, select=["LD204"])
    found = messages(report, "LD204")
    assert any(m.startswith("model.embed_tokens.weight: 1 Inf of") for m in found)
    assert any(m.startswith("language_model: the gradients of") for m in found)
    twin = apply_stage(core_llava(), "finetune")
    twin(input_ids=ids, labels=ids).loss.backward()
    assert llava_doctor.inspect(twin, select=["LD204"]).findings == []


# ----------------------------------------------------------------------------- `llava-doctor inspect`


@pytest.fixture(scope="module")
def saved_without_tower(tmp_path_factory):
    """A trained-projector original-LLaVA checkpoint saved without its frozen tower, with delay_load false / true."""
    from llava_doctor.core.tokenizer import load_tokenizer

    model = trained_projector(core_llava())
    folders = {}
    for delay in (False, True):
        folder = tmp_path_factory.mktemp(f"delay{int(delay)}")
        savers.save_llava_original(model, folder, include_vision_tower=False)
        config = json.loads((folder / "config.json").read_text())
        config["delay_load"] = delay
        savers.write_json(folder / "config.json", config)
        load_tokenizer().save_pretrained(str(folder))
        folders[delay] = folder
    return folders


def run_cli(*args):
    from click.testing import CliRunner

    from llava_doctor.cli import main

    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def test_cli_inspect_shows_the_delay_load_trap_and_its_twin(saved_without_tower):
    broken = run_cli(saved_without_tower[False], "--format", "json")
    assert broken.exit_code == 1, broken.output
    report = json.loads(broken.stdout)
    found = [f for f in report["findings"] if f["code"] == "LD304"]
    assert len(found) == 1 and "the load reported 39 vision_tower keys missing" in found[0]["message"]
    assert "delay_load false" in found[0]["message"]
    # transformers 4.x leaves the tower uninitialised memory, whose NaN bits LD204 reports too; 5.x initialises it
    expected = {"LD304"} if transformers_major() >= 5 else {"LD304", "LD204"}
    assert {f["code"] for f in report["findings"]} | {"LD304"} <= expected
    fixed = run_cli(saved_without_tower[True])
    assert fixed.exit_code == 0, fixed.output
    assert "vision tower: loaded, delay_load True (CLIPVisionModel)" in fixed.stdout
    assert "projector" in fixed.stdout and "no findings" in fixed.stdout
    missing = run_cli(saved_without_tower[True].parent / "nothing-here")
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1 and "not a checkpoint directory" in missing.stderr
