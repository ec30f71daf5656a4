"""Every `llava-doctor reproduce` scenario and its fixed twin, asserted on the artifacts themselves.

The assertions read what is on disk (shapes, keys, changed weights, generated ids, logged losses)
independently of the checks; where a check for the failure exists, it must fire on the broken
artifact and stay silent on the twin.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from llava_doctor import reproduce  # noqa: E402
from llava_doctor.cli.reproduce import reproduce as reproduce_command  # noqa: E402
from llava_doctor.findings import InputError  # noqa: E402

TOWER = "model.vision_tower.vision_tower."


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    """build(name, fixed) -> ScenarioResult, each scenario built once per session.

    The base tower and the healthy model are cached in $LLAVA_DOCTOR_CACHE (a session temp dir set
    by conftest.py), never in the user's home.
    """
    built: dict[tuple[str, bool], reproduce.ScenarioResult] = {}

    def get(name: str, fixed: bool) -> reproduce.ScenarioResult:
        if (name, fixed) not in built:
            out = tmp_path_factory.mktemp(f"{name}-{'fixed' if fixed else 'broken'}")
            built[name, fixed] = reproduce.build(name, out, fixed=fixed)
        return built[name, fixed]

    return get


def has_check(code: str) -> bool:
    from llava_doctor.registry import all_checks

    return code in all_checks()


def audit_codes(path: Path, code: str, **options) -> list[str]:
    if not has_check(code):
        pytest.skip(f"check {code} is not in llava_doctor.checks")
    from llava_doctor.api import audit

    return [f.message for f in audit([path], **options).by_code(code)]


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def facts_on_disk(result) -> dict:
    return json.loads((result.out_dir / reproduce.FACTS).read_text())


# --------------------------------------------------------------------------- framework and CLI


def test_registry_names_are_the_issue_names():
    assert reproduce.names() == ["zero3-save", "frozen-encoder-export", "tokenization-mismatch", "loss-collapse",
                                 "llm-not-frozen", "delay-load", "nan-logits", "lora-tunable-parts"]
    for name in reproduce.names():
        scenario = reproduce.get(name)
        assert scenario.name == name and scenario.title and scenario.broken.strip() and scenario.fixed.strip()
        assert scenario.seen.strip() and scenario.command.startswith("llava-doctor ")


def test_unknown_scenario_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown scenario 'nope'"):
        reproduce.build("nope", tmp_path)


def test_a_scenario_whose_optional_module_is_missing_says_which_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(reproduce.MissingDependency, match=r"needs peft: pip install 'llava-doctor\[lora\]'"):
        reproduce.build("lora-tunable-parts", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        reproduce.build("tokenization-mismatch", tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_cli_list():
    result = CliRunner().invoke(reproduce_command, ["--list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == reproduce.names()


@pytest.mark.parametrize("args", [["nope", "--out", "x"], [], ["zero3-save"], ["zero3-save", "--all", "--out", "x"]])
def test_cli_usage_errors_exit_2_with_one_line(args, tmp_path):
    result = CliRunner().invoke(reproduce_command, args)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "error" in result.output


def test_cli_builds_and_prints_the_command(tmp_path):
    out = tmp_path / "tm"
    result = CliRunner().invoke(reproduce_command, ["tokenization-mismatch", "--out", str(out), "--fixed"])
    assert result.exit_code == 0, result.output
    assert "--template chatml_direct" in result.output and (out / "README.txt").is_file()


def test_readme_says_what_was_done_seen_and_the_command(build):
    result = build("tokenization-mismatch", False)
    readme = result.readme.read_text()
    for part in ("What was done:", "What a user would have seen:", "WARNING: tokenization mismatch:",
                 "See it with llava-doctor:", result.command):
        assert part in readme
    assert facts_on_disk(result)["command"] == result.command


# --------------------------------------------------------------------------- zero3-save


@pytest.mark.slow
def test_zero3_save_broken_tensors_are_all_zero_size(build):
    result = build("zero3-save", False)
    shapes = safetensors_shapes(result.out_dir / "checkpoint" / "model.safetensors")
    assert shapes and all(shape == [0] for shape in shapes.values())
    assert set(shapes) == set(result.facts["true_shapes"])
    assert any(k.startswith(TOWER + "vision_model.") for k in shapes)  # written in LLaVA's (4.37) key names
    assert "copying a param with shape torch.Size([0]) from checkpoint" in result.facts["load_error"]
    assert json.loads((result.out_dir / "checkpoint" / "config.json").read_text())["architectures"] == ["LlavaLlamaForCausalLM"]
    assert all(math.isfinite(v) for v in result.facts["losses"]) and len(result.facts["losses"]) == 3
    assert list((result.out_dir / "ds_checkpoint").glob("global_step3/*model_states.pt"))


@pytest.mark.slow
def test_zero3_save_engine_checkpoint_still_recovers_the_weights(build):
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from llava_doctor.core.savers import llava_original_key

    result = build("zero3-save", False)
    with contextlib.redirect_stdout(io.StringIO()):
        recovered = get_fp32_state_dict_from_zero_checkpoint(str(result.out_dir / "ds_checkpoint"))
    assert {llava_original_key(k): list(v.shape) for k, v in recovered.items()} == result.facts["true_shapes"]


@pytest.mark.slow
def test_zero3_save_fixed_has_full_shapes(build):
    result = build("zero3-save", True)
    shapes = safetensors_shapes(result.out_dir / "checkpoint" / "model.safetensors")
    assert shapes == result.facts["true_shapes"]
    assert shapes["model.embed_tokens.weight"][1] == 64 and result.facts["load_error"] is None


@pytest.mark.slow
def test_zero3_save_ld201(build):
    broken = audit_codes(build("zero3-save", False).out_dir / "checkpoint", "LD201")
    assert broken
    assert audit_codes(build("zero3-save", True).out_dir / "checkpoint", "LD201") == []


# --------------------------------------------------------------------------- frozen-encoder-export


@pytest.mark.slow
def test_frozen_encoder_export_has_no_encoder(build):
    import torch

    result = build("frozen-encoder-export", False)
    saved = torch.load(result.out_dir / result.facts["pth"], weights_only=True)
    state = saved["state_dict"]
    assert not any(k.startswith("visual_encoder.") for k in state)
    assert {k.split(".")[0] for k in state} == {"llm", "projector"}
    assert "Missing key(s)" in result.facts["pth_to_hf_error"] and "vision_tower" in result.facts["pth_to_hf_error"]
    assert not (result.out_dir / "hf_export").exists()


@pytest.mark.slow
def test_frozen_encoder_export_fixed_is_complete(build):
    import torch

    result = build("frozen-encoder-export", True)
    state = torch.load(result.out_dir / result.facts["pth"], weights_only=True)["state_dict"]
    tower = [k for k in state if k.startswith("visual_encoder.vision_model.")]
    assert len(tower) == result.facts["visual_encoder_params_in_model"] > 0
    assert result.facts["pth_to_hf_error"] is None
    assert (result.out_dir / "hf_export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_frozen_encoder_export_ld202(build):
    pth = build("frozen-encoder-export", False).facts["pth"]
    assert audit_codes(build("frozen-encoder-export", False).out_dir / pth, "LD202")
    assert audit_codes(build("frozen-encoder-export", True).out_dir / pth, "LD202") == []


# --------------------------------------------------------------------------- tokenization-mismatch


def test_tokenization_mismatch_drops_every_multi_round_sample(build):
    result = build("tokenization-mismatch", False)
    facts = result.facts
    records = json.loads((result.out_dir / "data.json").read_text())
    multi_round = {r["id"] for r in records if len(r["conversations"]) > 2}
    assert set(facts["dropped_ids"]) == multi_round and len(multi_round) > len(records) // 2
    assert facts["warnings"] and all(re.fullmatch(r"WARNING: tokenization mismatch: \d+ vs\. \d+\. \(ignored\)", w)
                                     for w in facts["warnings"])
    assert facts["supervised_tokens"] < facts["answer_tokens"]
    run = json.loads((result.out_dir / "run.json").read_text())
    assert run["version"] == "v1" and run["recipe"] == "llava-1.5"
    assert (result.out_dir / "tokenizer" / "tokenizer.json").is_file()
    assert (result.out_dir / "images" / records[0]["image"]).is_file()
    assert facts["tokenizer_adds_bos"] is False


def test_tokenization_mismatch_fixed_template_drops_nothing(build):
    facts = build("tokenization-mismatch", True).facts
    assert facts["template"] == "chatml_direct" and facts["dropped_samples"] == 0
    assert facts["supervised_tokens"] == facts["answer_tokens"] > 0


def test_tokenization_mismatch_ld101(build):
    if not has_check("LD101"):
        pytest.skip("check LD101 is not in llava_doctor.checks")
    from llava_doctor.core.tokenizer import load_tokenizer
    from llava_doctor.templates.audit import audit_conversations

    for fixed, template in ((False, "v1"), (True, "chatml_direct")):
        out = build("tokenization-mismatch", fixed).out_dir
        records = json.loads((out / "data.json").read_text())
        report = audit_conversations(records, load_tokenizer(out / "tokenizer"), template, recipe="llava-1.5")
        findings = report.by_code("LD101")
        if fixed:
            assert findings == []
        else:
            # one finding per cause, counting its samples
            assert sum(f.extra.get("count", 1) for f in findings) == build("tokenization-mismatch", False).facts["dropped_samples"]
            assert any("tokenization mismatch" in f.message for f in findings)


# --------------------------------------------------------------------------- loss-collapse


@pytest.mark.slow
def test_loss_collapse_logs_zero_loss(build):
    result = build("loss-collapse", False)
    state = json.loads((result.out_dir / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    assert len(logged) == result.facts["steps"] // result.facts["logging_steps"]
    assert all(e["loss"] == 0.0 and e["grad_norm"] == 0.0 for e in logged)
    assert set(result.facts["supervised_tokens_per_batch"]) == {0}
    assert result.facts["nan_step_losses"] == result.facts["steps"]  # the real step losses were NaN
    assert result.facts["weights_changed"] is False


@pytest.mark.slow
def test_loss_collapse_fixed_learns(build):
    result = build("loss-collapse", True)
    logged = [e["loss"] for e in json.loads((result.out_dir / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert all(v > 0 for v in logged) and logged[-1] < logged[0] * 0.8
    assert result.facts["nan_step_losses"] == 0 and result.facts["weights_changed"] is True


# --------------------------------------------------------------------------- llm-not-frozen


def _changed(base: Path, trained: Path) -> dict[str, bool]:
    from safetensors.torch import load_file

    from llava_doctor.layout import component_of

    before, after = load_file(str(base / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    assert set(before) == set(after)
    changed: dict[str, bool] = {}
    for key in before:
        component = component_of(key, "llava-original")
        changed[component] = changed.get(component, False) or not before[key].equal(after[key])
    return changed


@pytest.mark.slow
def test_llm_not_frozen_llm_changed(build):
    result = build("llm-not-frozen", False)
    changed = _changed(result.out_dir / "base", result.out_dir / "trained")
    assert changed == {"language_model": True, "lm_head": True, "projector": True, "vision_tower": False}
    assert json.loads((result.out_dir / "trained" / "config.json").read_text())["tune_mm_mlp_adapter"] is True
    assert result.facts["trainable_elements"]["language_model"] == result.facts["total_elements"]["language_model"]


@pytest.mark.slow
def test_llm_not_frozen_fixed_only_projector_changed(build):
    result = build("llm-not-frozen", True)
    changed = _changed(result.out_dir / "base", result.out_dir / "trained")
    assert changed == {"language_model": False, "lm_head": False, "projector": True, "vision_tower": False}
    assert "llm_base=0" in result.facts["trainable_parameter_groups"]


@pytest.mark.slow
def test_llm_not_frozen_ld302(build):
    for fixed in (False, True):
        out = build("llm-not-frozen", fixed).out_dir
        messages = audit_codes(out / "trained", "LD302", base=out / "base", stage="pretrain", deep=True)
        assert bool(messages) is (not fixed)


# --------------------------------------------------------------------------- lora-tunable-parts


def _preflight(result):
    from llava_doctor.api import preflight

    return preflight(str(result.out_dir / "finetune.sh"), workdir=result.out_dir)


@pytest.mark.slow
def test_lora_tunable_parts_trains_the_whole_llm_before_the_fix(build):
    result = build("lora-tunable-parts", False)
    facts = result.facts
    assert facts["lora_fix_in_checkout"] is False
    # the checkout's own lines, run on the PEFT model: every base LLM weight and lm_head trainable, and one real
    # optimizer step moved them
    assert facts["trainable_elements"]["language_model"] == facts["total_elements"]["language_model"] > 0
    assert facts["trainable_elements"]["lm_head"] == facts["total_elements"]["lm_head"] > 0
    assert facts["tensors_changed_by_one_step"]["language_model"] > 0 and facts["tensors_changed_by_one_step"]["lm_head"] == 1
    assert facts["trainable_groups"]["llm_base"] > facts["trainable_groups"]["lora"] > 0
    assert math.isfinite(facts["step_loss"]) and facts["train_start_codes"] == ["LD301"]
    assert "if not training_args.lora_enable" not in (result.out_dir / "llava/train/train.py").read_text()


@pytest.mark.slow
def test_lora_tunable_parts_fixed_trains_adapters_projector_and_tower_only(build):
    facts = build("lora-tunable-parts", True).facts
    assert facts["lora_fix_in_checkout"] is True
    assert facts["trainable_elements"]["language_model"] == facts["trainable_elements"]["lm_head"] == 0
    assert facts["tensors_changed_by_one_step"]["language_model"] == facts["tensors_changed_by_one_step"]["lm_head"] == 0
    assert facts["tensors_changed_by_one_step"]["lora"] > 0 and facts["tensors_changed_by_one_step"]["projector"] > 0
    assert "llm_base=0" in facts["trainable_parameter_groups"] and facts["train_start_codes"] == []


@pytest.mark.slow
def test_lora_tunable_parts_preflight_reads_the_checkout(build):
    broken, fixed = _preflight(build("lora-tunable-parts", False)), _preflight(build("lora-tunable-parts", True))
    assert {f.code for f in broken.findings} == {"LD301"}
    assert {f.message.split(":")[0] for f in broken.by_code("LD301")} == {"language_model", "lm_head"}
    assert not fixed.findings and not fixed.input_errors


# --------------------------------------------------------------------------- nan-logits


@pytest.mark.slow
def test_nan_logits_fp16_emits_token_zero(build):
    result = build("nan-logits", False)
    generation = json.loads((result.out_dir / "generation.json").read_text())
    assert generation["dtype"] == "float16"
    assert generation["generated_ids"] and set(generation["generated_ids"]) == {0}
    assert generation["all_logits_finite"] is False and generation["first_nonfinite_module"]
    assert result.facts["weights_finite"] is True  # the weights fit float16; the activations do not
    assert result.facts["fp32_text_after_scaling"] == result.facts["fp32_text_before_scaling"]
    config = json.loads((result.out_dir / "model" / "config.json").read_text())
    assert config["torch_dtype"] == "float16"
    assert all(dtype == "F16" for dtype in _dtypes(result.out_dir / "model" / "model.safetensors"))


@pytest.mark.slow
def test_nan_logits_bf16_is_finite(build):
    result = build("nan-logits", True)
    generation = json.loads((result.out_dir / "generation.json").read_text())
    assert generation["dtype"] == "bfloat16" and generation["all_logits_finite"] is True
    assert 0 not in generation["generated_ids"] and generation["generated_text"]
    assert generation["first_nonfinite_module"] is None


def _dtypes(path: Path) -> set[str]:
    import struct

    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


# --------------------------------------------------------------------------- delay-load


@pytest.mark.slow
def test_delay_load_eager_tower_ends_up_random(build):
    result = build("delay-load", False)
    facts = result.facts
    assert facts["files_in_checkpoint"] == ["config.json", "mm_projector.bin"]  # the pretrain stage's output
    config = json.loads((result.out_dir / "checkpoint" / "config.json").read_text())
    assert "delay_load" not in config and config["mm_tunable_parts"] == "mm_mlp_adapter"
    assert Path(config["mm_vision_tower"]).is_dir()
    assert facts["tower_keys_newly_initialized"] > 0 and facts["tower_loaded_by_from_pretrained"] is True
    assert facts["tower_equals_base"] is False
    assert facts["correct_answers"] < facts["correct_healthy_answers"]  # the answers stop following the picture
    assert facts["distinct_answers"] < facts["distinct_healthy_answers"]


@pytest.mark.slow
def test_delay_load_fixed_loads_the_base_tower(build):
    result = build("delay-load", True)
    facts = result.facts
    assert facts["delay_load"] is True and facts["tower_loaded_by_from_pretrained"] is False
    assert facts["tower_equals_base"] is True and facts["tower_keys_newly_initialized"] == 0
    assert facts["answers"] == facts["healthy_answers"]
    assert facts["correct_answers"] * 2 >= len(facts["answers"])  # the healthy core names most pictures right


@pytest.mark.slow
def test_delay_load_audit_on_the_checkpoint_users_have(build):
    """audit reads the projector-only checkpoint alone: the eager tower of its config is the trap (LD304)."""
    for fixed in (False, True):
        messages = audit_codes(build("delay-load", fixed).out_dir / "checkpoint", "LD304")
        assert bool(messages) is (not fixed), messages


def test_refuses_a_directory_holding_another_scenario(build, tmp_path):
    out = build("tokenization-mismatch", False).out_dir
    with pytest.raises(InputError, match="holds scenario 'tokenization-mismatch'"):
        reproduce.build("loss-collapse", out)
    (out / "notes.txt").write_text("mine")
    assert reproduce.build("tokenization-mismatch", out, fixed=True).facts["template"] == "chatml_direct"
    assert (out / "notes.txt").read_text() == "mine"  # only what the earlier build wrote is replaced
    (out / "notes.txt").unlink()
    reproduce.build("tokenization-mismatch", out)  # leave it as the session fixture built it
