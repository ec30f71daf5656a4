"""The command line contract: exit codes 0/1/2, formats, selection, settings, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from llava_doctor.cli import main
from llava_doctor.registry import all_checks


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("cli")
    good = {
        "vision_tower.vision_model.embeddings.patch_embedding.weight": torch.randn(8, 3, 4, 4),
        "multi_modal_projector.linear_1.weight": torch.randn(16, 8),
        "language_model.model.embed_tokens.weight": torch.randn(32, 16),
        "language_model.lm_head.weight": torch.randn(32, 16),
    }
    bad = dict(good, **{"multi_modal_projector.linear_1.weight": torch.zeros(0)})
    save_file(good, root / "good.safetensors")
    save_file(bad, root / "bad.safetensors")
    return root


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_clean_checkpoint_exits_0(ckpts):
    result = invoke(["audit", str(ckpts / "good.safetensors")])
    assert result.exit_code == 0, result.output
    assert "no findings" in result.output


def test_finding_exits_1_and_names_the_tensor(ckpts):
    result = invoke(["audit", str(ckpts / "bad.safetensors")])
    assert result.exit_code == 1
    assert "LD201" in result.output and "multi_modal_projector.linear_1.weight" in result.output


def test_unreadable_input_exits_2_with_one_line(ckpts):
    proc = subprocess.run([sys.executable, "-m", "llava_doctor", "audit", str(ckpts / "missing.safetensors")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_usage_error_exits_2():
    assert invoke(["audit"]).exit_code == 2
    assert invoke(["audit", "x", "--format", "yaml"]).exit_code == 2


def test_json_format_contract(ckpts):
    result = invoke(["audit", str(ckpts / "bad.safetensors"), str(ckpts / "good.safetensors"), "--format", "json"])
    doc = json.loads(result.output)
    assert doc["version"] == 1 and doc["summary"]["artifacts"] == 2
    codes = [f["code"] for f in doc["findings"]]
    assert "LD201" in codes
    assert all({"code", "severity", "message", "artifact", "location"} <= set(f) for f in doc["findings"])


def test_select_ignore_exit_zero_and_output(ckpts, tmp_path):
    bad = str(ckpts / "bad.safetensors")
    assert invoke(["audit", bad, "--ignore", "LD201"]).exit_code == 0
    assert invoke(["audit", bad, "--select", "LD1,LD206"]).exit_code == 0
    assert invoke(["audit", bad, "--exit-zero"]).exit_code == 0
    out = tmp_path / "report.sarif"
    result = invoke(["audit", bad, "--format", "sarif", "--output", str(out)])
    assert result.exit_code == 1 and result.output == ""
    assert json.loads(out.read_text())["runs"][0]["results"][0]["ruleId"] == "LD201"


def test_pyproject_settings_apply_and_command_line_wins(ckpts, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.llava-doctor]\nignore = ["LD201"]\nseverity = { LD201 = "info" }\n')
    bad = str(ckpts / "bad.safetensors")
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(main, ["audit", bad]).exit_code == 0
    # the command line's --ignore replaces the file's; the severity override still makes it info
    result = runner.invoke(main, ["audit", bad, "--ignore", "LD9", "--format", "json"])
    doc = json.loads(result.output)
    assert result.exit_code == 0 and [f["severity"] for f in doc["findings"] if f["code"] == "LD201"] == ["info"]
    assert runner.invoke(main, ["audit", bad, "--ignore", "LD9", "--fail-on", "info"]).exit_code == 1


def test_broken_settings_file_exits_2(ckpts, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.llava-doctor]\nfail-on = "sometimes"\n')
    proc = subprocess.run([sys.executable, "-m", "llava_doctor", "audit", str(ckpts / "good.safetensors")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "fail-on" in proc.stderr and "Traceback" not in proc.stderr


def test_rules_lists_every_code_and_explain_explains():
    result = invoke(["rules"])
    assert result.exit_code == 0
    for code in all_checks():
        assert code in result.output
    explained = invoke(["explain", "ld201"])
    assert explained.exit_code == 0 and "Why:" in explained.output and "Fix:" in explained.output
    assert invoke(["explain", "LD999"]).exit_code == 2
