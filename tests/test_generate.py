"""`llava-doctor generate` and LD502/LD503 on the real nan-logits scenario and its bfloat16 twin."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from llava_doctor import reproduce  # noqa: E402
from llava_doctor.artifacts.generation import read_config, run_generation  # noqa: E402
from llava_doctor.cli import main  # noqa: E402
from llava_doctor.api import check_generation  # noqa: E402
from llava_doctor.core.data import DESCRIBE_PROMPT  # noqa: E402
from llava_doctor.findings import InputError  # noqa: E402

MAX_NEW_TOKENS = 12  # the scenario's own


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """{False: broken, True: fixed} ScenarioResults of nan-logits, built once for this module."""
    return {fixed: reproduce.build("nan-logits", tmp_path_factory.mktemp(f"nan-logits-{fixed}"), fixed=fixed)
            for fixed in (False, True)}


@pytest.fixture(scope="module")
def generations(scenario):
    return {fixed: run_generation(result.out_dir / "model", result.out_dir / "image.png", prompt=DESCRIBE_PROMPT,
                                  max_new_tokens=MAX_NEW_TOKENS)
            for fixed, result in scenario.items()}


def _generate(*args: str):
    return CliRunner().invoke(main, ["generate", *args])


@pytest.mark.slow
def test_broken_generation_matches_the_scenario_facts(scenario, generations):
    facts, generation = scenario[False].facts, generations[False]
    assert generation.dtype == "float16"
    assert list(generation.token_ids) == facts["generated_ids"] and set(generation.token_ids) == {0}
    assert generation.step_logits_finite == (False,) * MAX_NEW_TOKENS
    assert generation.first_nonfinite_module == facts["first_nonfinite_module"]
    assert generation.first_nonfinite_step == 1 and generation.first_nonfinite_value == "inf"
    assert generation.token_zero == "<unk>"  # the bundled tokenizer's id 0 (Qwen2's is '!')


@pytest.mark.slow
def test_broken_fires_ld502_and_ld503_naming_the_first_module(scenario, generations):
    report = check_generation(generations[False])
    assert sorted(set(report.codes())) == ["LD502", "LD503"]
    (run,) = report.by_code("LD502")
    assert f"{MAX_NEW_TOKENS} times in a row from step 1 (all {MAX_NEW_TOKENS} generated tokens)" in run.message
    (first,) = report.by_code("LD503")
    module = scenario[False].facts["first_nonfinite_module"]
    assert first.location == module and f"{module} produced inf at step 1 in float16" in first.message


@pytest.mark.slow
def test_fixed_twin_is_clean_and_answers_like_the_scenario(scenario, generations):
    facts, generation = scenario[True].facts, generations[True]
    assert generation.dtype == "bfloat16" and all(generation.step_logits_finite)
    assert generation.first_nonfinite_module is None
    assert generation.text == facts["generated_text"] and generation.text
    assert check_generation(generation).findings == []


@pytest.mark.slow
def test_cli_exit_codes_and_generated_line(scenario):
    broken, fixed = scenario[False].out_dir, scenario[True].out_dir
    result = _generate(str(broken / "model"), "--image", str(broken / "image.png"), "--max-new-tokens", "4")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("generated (float16, 4 tokens): ''  ids: 0 0 0 0\n")
    assert "LD502" in result.output and "LD503" in result.output
    result = _generate(str(fixed / "model"), "--image", str(fixed / "image.png"))
    assert result.exit_code == 0, result.output
    assert "no findings" in result.output


@pytest.mark.slow
def test_cli_dtype_override_is_the_fix(scenario):
    broken = scenario[False].out_dir
    result = _generate(str(broken / "model"), "--image", str(broken / "image.png"), "--dtype", "bfloat16",
                       "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["findings"] == []


def test_cli_bad_checkpoint_path_exits_2(tmp_path):
    result = _generate(str(tmp_path / "missing"), "--image", str(tmp_path / "image.png"))
    assert result.exit_code == 2
    assert "not a checkpoint directory" in result.output and "Traceback" not in result.output


def test_other_architectures_are_an_input_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(InputError, match=r"generate supports checkpoints of the bundled core's architectures "
                                         r"\(llava_llama, llava_qwen\); got model_type 'llava'"):
        read_config(tmp_path)


@pytest.mark.slow
def test_bad_image_is_an_input_error(scenario, tmp_path):
    bad = tmp_path / "image.png"
    bad.write_bytes(b"GIF89a")
    result = _generate(str(scenario[False].out_dir / "model"), "--image", str(bad))
    assert result.exit_code == 2 and "not a PNG file" in result.output


@pytest.mark.slow
def test_demo_catches_nan_logits_and_passes_the_twin(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--only", "nan-logits", "-q", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("nan-logits")}
    assert "CAUGHT" in rows["broken"] and "clean" in rows["fixed"]
    assert "1 of 1 checked failures caught, 0 false alarm(s)" in result.output


def test_generate_is_registered():
    assert "generate" in main.list_commands(None)

