"""The command line contract: exit codes 0/1/2, formats, selection, settings, never a traceback,
no false clean from a mistyped option, a quiet end on a closed pipe, no library noise on stderr."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner

from llava_doctor.cli import main
from llava_doctor.registry import Check, all_checks

ROOT = Path(__file__).resolve().parent.parent


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
    bad_lm = dict(good, **{"language_model.lm_head.weight": torch.zeros(0)})
    save_file(bad_lm, root / "bad2.safetensors")
    return root


def invoke(args, **kwargs):
    return CliRunner().invoke(main, args, catch_exceptions=False, **kwargs)


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("llava-doctor: error: ")
    return lines[0]


def test_clean_checkpoint_exits_0(ckpts):
    result = invoke(["audit", str(ckpts / "good.safetensors")])
    assert result.exit_code == 0, result.output
    assert "no findings" in result.output


def test_finding_exits_1_and_names_the_tensor(ckpts):
    result = invoke(["audit", str(ckpts / "bad.safetensors")])
    assert result.exit_code == 1
    assert "LD201" in result.output and "multi_modal_projector.linear_1.weight" in result.output


def test_unreadable_input_exits_2_with_one_line_and_no_traceback(ckpts):
    proc = subprocess.run([sys.executable, "-m", "llava_doctor", "audit", str(ckpts / "missing.safetensors")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert [line for line in proc.stdout.splitlines() if "missing.safetensors" in line] == \
        [f"cannot read {ckpts / 'missing.safetensors'}: no such file or directory"]


def test_usage_error_exits_2():
    assert invoke(["audit"]).exit_code == 2
    assert invoke(["audit", "x", "--format", "yaml"]).exit_code == 2


def test_json_format_contract(ckpts):
    result = invoke(["audit", str(ckpts / "bad.safetensors"), str(ckpts / "good.safetensors"), "--format", "json"])
    doc = json.loads(result.output)
    assert doc["version"] == 1 and doc["summary"]["artifacts"] == 2 and doc["errors"] == []
    codes = [f["code"] for f in doc["findings"]]
    assert "LD201" in codes
    assert all({"code", "severity", "message", "artifact", "location", "doc"} <= set(f) for f in doc["findings"])
    assert {f["doc"] for f in doc["findings"]} == {"llava-doctor explain LD201"}


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
    (tmp_path / "pyproject.toml").write_text('[tool.llava-doctor]\nignore = ["LD201"]\nseverity = { LD2 = "info" }\n')
    bad = str(ckpts / "bad.safetensors")
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(main, ["audit", bad]).exit_code == 0
    # the command line's --ignore replaces the file's; the (prefix) severity override still makes it info
    result = runner.invoke(main, ["audit", bad, "--ignore", "LD208", "--format", "json"])
    doc = json.loads(result.output)
    assert result.exit_code == 0 and [f["severity"] for f in doc["findings"] if f["code"] == "LD201"] == ["info"]
    assert runner.invoke(main, ["audit", bad, "--ignore", "LD208", "--fail-on", "info"]).exit_code == 1


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
    assert explained.exit_code == 0
    for part in ("Why:", "Fix:", "Examples:", "Fires on:", "Silent on:", "zero_to_fp32.py"):
        assert part in explained.output
    assert invoke(["explain", "LD999"]).exit_code == 2
    assert "LD201-LD208" in _one_error_line(invoke(["explain", "LD2"]))


# --- unknown names are usage errors (ruff), never a silently disabled check -------------------------

@pytest.mark.parametrize("args, expected", [
    (["--select", "LD999"], "--select: unknown code or prefix 'LD999'"),
    (["--ignore", "LD21"], "did you mean LD201?"),
    (["--select", "LD201,XX"], "'XX'"),
    (["--format", "jsn"], "--format: unknown format 'jsn' (did you mean json?)"),
])
def test_unknown_command_line_values_are_one_line_usage_errors(ckpts, args, expected):
    result = invoke(["audit", str(ckpts / "bad.safetensors"), *args])
    assert result.exit_code == 2 and result.stdout == ""
    line = _one_error_line(result)
    assert expected in line and "known:" in line


@pytest.mark.parametrize("body, expected", [
    ('select = ["LD999"]', "select: unknown code or prefix 'LD999'"),
    ('ignore = ["ld2o5"]', "did you mean LD205?"),
    ('severity = { LD2O1 = "info" }', "severity: unknown code or prefix 'LD2O1' (did you mean LD201?)"),
    ('stage = "pre-train"', "stage: unknown stage 'pre-train' (did you mean pretrain?); known: pretrain, finetune, lora"),
    ('template = "vicuna-v1"', "template: unknown template 'vicuna-v1' (did you mean vicuna_v1?)"),
    ('recipe = "llava15"', "recipe: unknown recipe 'llava15' (did you mean llava-1.5?)"),
    ('format = "sarif2"', "format: unknown format 'sarif2' (did you mean sarif?)"),
    ('fail_on = "warning"', "unknown key 'fail_on' (did you mean fail-on?)"),
])
def test_unknown_pyproject_values_are_one_line_usage_errors(ckpts, tmp_path, monkeypatch, body, expected):
    (tmp_path / "pyproject.toml").write_text(f"[tool.llava-doctor]\n{body}\n")
    monkeypatch.chdir(tmp_path)
    result = invoke(["audit", str(ckpts / "bad.safetensors")])
    assert result.exit_code == 2 and result.stdout == ""
    line = _one_error_line(result)
    assert "pyproject.toml: [tool.llava-doctor]" in line and expected in line


class _PluginCheck(Check):
    code, title, artifact = "XY001", "a third-party checkpoint check", "Checkpoint"
    rationale, fix = "proves that third-party codes are valid in --select", "none"

    def run(self, checkpoint, context):
        yield self.finding("plugin ran", artifact=checkpoint.name)


class _EntryPoint:
    def __init__(self, name, value, obj):
        self.name, self.value, self._obj = name, value, obj

    def load(self):
        return self._obj


ACME_REPORTER = """
class UpperReporter:
    name = "upper"

    def render(self, report, *, color=False, rules=None):
        return "\\n".join(f"{f.code} {f.message.upper()}" for f in report.findings)
"""


@pytest.fixture
def plugins(monkeypatch, tmp_path):
    """A third-party check and a third-party reporter registered through entry points, as an installed
    plugin package registers them (the reporter is loaded from its "module:Class" value)."""
    (tmp_path / "acme_reporter.py").write_text(ACME_REPORTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = metadata.entry_points
    fakes = {"llava_doctor.checks": [_EntryPoint("xy", "acme:_PluginCheck", _PluginCheck)],
             "llava_doctor.reporters": [_EntryPoint("upper", "acme_reporter:UpperReporter", None)]}

    def entry_points(group=None, **kw):
        return fakes[group] if group in fakes else real(group=group, **kw)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    all_checks(refresh=True)
    yield
    monkeypatch.undo()
    all_checks(refresh=True)


def test_all_and_third_party_codes_are_valid_selections(ckpts, plugins):
    bad = str(ckpts / "bad.safetensors")
    result = invoke(["audit", bad, "--select", "XY001", "--format", "json"])
    assert result.exit_code == 1 and [f["code"] for f in json.loads(result.stdout)["findings"]] == ["XY001"]
    assert "XY001" in invoke(["rules"]).output
    assert "proves that third-party codes" in invoke(["explain", "xy001"]).output
    assert invoke(["audit", bad, "--select", "ALL", "--ignore", "XY"]).exit_code == 1


def test_third_party_reporters_are_selectable_formats(ckpts, plugins, tmp_path, monkeypatch):
    result = invoke(["audit", str(ckpts / "bad.safetensors"), "--format", "upper"])
    assert result.exit_code == 1 and result.stdout.startswith("LD201 PROJECTOR: 1 OF 1 TENSORS"), result.output
    (tmp_path / "pyproject.toml").write_text('[tool.llava-doctor]\nformat = "upper"\n')
    monkeypatch.chdir(tmp_path)
    assert invoke(["audit", str(ckpts / "bad.safetensors")]).stdout.startswith("LD201 PROJECTOR")


# --- a selection that checks nothing is not a clean verdict ---------------------------------------

def test_a_selection_with_no_check_for_the_input_is_a_usage_error(ckpts):
    bad = str(ckpts / "bad.safetensors")
    line = _one_error_line(invoke(["audit", bad, "--select", "LD1"]))
    assert "nothing to check" in line and "Checkpoint" in line and "LD201-LD208" in line
    line = _one_error_line(invoke(["audit", bad, "--select", "LD204"]))
    assert "LD204 read tensor data: add --deep" in line
    assert invoke(["audit", bad, "--select", "LD204", "--deep"]).exit_code == 0
    assert invoke(["logs", bad, "--select", "LD2"]).exit_code == 2


def test_a_named_check_that_cannot_run_is_a_warning_not_silence(ckpts):
    result = invoke(["audit", str(ckpts / "bad.safetensors"), "--select", "LD201,LD204"])
    assert result.exit_code == 1 and "LD201" in result.stdout
    assert result.stderr.strip() == "llava-doctor: warning: LD204 not run: it reads tensor data (add --deep)"


# --- unreadable inputs among several: every format says so, exit 2 even with --exit-zero --------------

@pytest.mark.parametrize("fmt", ["text", "json", "junit", "sarif", "github"])
def test_an_unreadable_input_among_several_is_reported_and_exits_2(ckpts, fmt):
    missing = str(ckpts / "missing.safetensors")
    result = invoke(["audit", str(ckpts / "bad.safetensors"), missing, str(ckpts / "good.safetensors"),
                     "--format", fmt, "--exit-zero"])
    assert result.exit_code == 2
    out = result.stdout
    assert "LD201" in out  # the readable inputs were audited
    if fmt == "text":
        assert f"cannot read {missing}: no such file or directory" in out.splitlines()
        assert out.splitlines()[-1].endswith("; 1 input(s) could not be read")
        assert result.stderr == ""
    else:
        assert result.stderr.strip() == f"llava-doctor: error: {missing}: no such file or directory"
    if fmt == "json":
        assert json.loads(out)["errors"] == [{"artifact": missing, "message": f"{missing}: no such file or directory"}]
    elif fmt == "junit":
        suite = next(s for s in ET.fromstring(out).iter("testsuite") if s.get("name") == missing)
        assert suite.get("errors") == "1" and len(list(suite.iter("error"))) == 1
    elif fmt == "sarif":
        invocation = json.loads(out)["runs"][0]["invocations"][0]
        assert invocation["executionSuccessful"] is False
        assert invocation["toolExecutionNotifications"][0]["message"]["text"].endswith("no such file or directory")
    elif fmt == "github":
        assert out.splitlines()[-1].startswith(f"::error file={missing},title=unreadable input::")


# --- --statistics, fix paragraphs once per code -----------------------------------------------------

def test_statistics_count_per_code_in_text_and_json(ckpts):
    paths = [str(ckpts / "bad.safetensors"), str(ckpts / "bad2.safetensors"), str(ckpts / "good.safetensors")]
    text = invoke(["audit", *paths, "--statistics"])
    assert text.exit_code == 1
    assert text.stdout.splitlines() == ["2  LD201  error    zero-size parameters",
                                        "2 finding(s) in 3 artifact(s): 2 error(s), 0 warning(s), 0 info"]
    doc = json.loads(invoke(["audit", *paths, "--statistics", "--format", "json"]).stdout)
    assert doc["statistics"] == [{"code": "LD201", "count": 2, "occurrences": 2, "severity": "error",
                                  "title": "zero-size parameters", "doc": "llava-doctor explain LD201"}]
    assert doc["summary"]["findings"] == 2
    assert "--statistics prints text or json" in _one_error_line(invoke(["audit", *paths, "--statistics", "--format", "sarif"]))


def test_text_prints_each_fix_once_per_code(ckpts):
    out = invoke(["audit", str(ckpts / "bad.safetensors"), str(ckpts / "bad2.safetensors")]).stdout
    assert out.count("LD201 error:") == 2 and out.count("Gather before saving") == 1


# --- the process-level promises: closed pipes, unwritable --out, no noise -------------------------------

def _run_into_closed_pipe(args: list[str], cwd: Path) -> subprocess.Popen:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write hits EPIPE
    try:
        return subprocess.Popen([sys.executable, "-m", "llava_doctor", *args], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, cwd=cwd)
    finally:
        os.close(write_end)


@pytest.mark.slow
def test_a_closed_stdout_pipe_ends_every_command_quietly(ckpts):
    bad = str(ckpts / "bad.safetensors")
    commands = {
        "rules": (["rules"], 1), "explain": (["explain", "LD201"], 1), "reproduce --list": (["reproduce", "--list"], 1),
        # a report written in full keeps its verdict (0 clean, 1 findings); a listing cut short exits 1
        "audit clean": (["audit", str(ckpts / "good.safetensors")], 0), "audit json": (["audit", bad, "--format", "json"], 1),
        "audit --statistics": (["audit", bad, "--statistics"], 1), "--help": (["audit", "--help"], 1),
    }
    procs = {name: _run_into_closed_pipe(args, ckpts) for name, (args, _) in commands.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert stderr == "", f"{name}: {stderr}"
        assert proc.returncode == commands[name][1], name


@pytest.mark.parametrize("where", ["file/below", "/proc/llava-doctor-out"])
def test_reproduce_into_an_unwritable_out_is_one_line(tmp_path, where):
    (tmp_path / "file").write_text("not a directory")
    out = where if where.startswith("/") else str(tmp_path / where)
    result = invoke(["reproduce", "tokenization-mismatch", "--out", out])
    assert result.exit_code == 2 and result.stdout == ""
    assert "cannot write tokenization-mismatch to" in _one_error_line(result)


NOISE_PROBE = textwrap.dedent("""
    import sys, warnings
    warnings.filterwarnings("error", module=r"llava_doctor(\\.|$)")  # a warning from our own code fails
    from llava_doctor.cli import main

    codes = []
    for argv in ARGS:
        try:
            main.main(argv, prog_name="llava-doctor", standalone_mode=False)
        except SystemExit as exc:
            codes.append(exc.code)
    print("EXIT CODES", codes)
""")


@pytest.mark.slow
def test_no_noise_on_stderr_and_no_warnings_from_our_code(ckpts, tmp_path):
    from llava_doctor.core.tokenizer import ASSET_DIR
    from tests._ckpt_builders import save_hf_llava

    hf = save_hf_llava(tmp_path / "hf")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": s, "loss": 2.0 - 0.1 * s, "grad_norm": 1.0, "learning_rate": 1e-4} for s in range(1, 6)]}))
    (tmp_path / "data.json").write_text(json.dumps([{"id": "a", "conversations": [
        {"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A cat."}]}]))
    args = [["rules"], ["explain", "LD101"], ["audit", str(hf)], ["audit", str(hf), "--deep", "--format", "json"],
            ["logs", str(tmp_path / "trainer_state.json")],
            ["data", str(tmp_path / "data.json"), "--tokenizer", str(ASSET_DIR), "--template", "v1"],
            ["reproduce", "tokenization-mismatch", "--out", str(tmp_path / "tm")]]
    proc = subprocess.run([sys.executable, "-c", NOISE_PROBE.replace("ARGS", repr(args))], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stderr == "", proc.stderr
    codes = json.loads(proc.stdout.rsplit("EXIT CODES ", 1)[1])
    assert len(codes) == len(args) and set(codes) <= {0, 1}, proc.stdout[-3000:]  # findings are fine; errors are not


# --- progress: on a terminal only ----------------------------------------------------------------------

class _Terminal:
    """A stderr that says it is a terminal and keeps what is drawn on it."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_is_drawn_on_a_terminal_for_text_output_only(monkeypatch):
    import time

    from llava_doctor.progress import progress_allowed, progress_bar

    for name in ("NO_COLOR", "CI", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # in the test body: pytest's capture resets it after fixtures

    assert progress_allowed("text") and not progress_allowed("json")
    bar = progress_bar(None, True, "building zero3-save", delay=0.0, ticking=True)
    deadline = time.monotonic() + 30
    while terminal.text.count("building zero3-save") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the ticker redraws the elapsed time without any update() from the step
    bar.close()
    assert "building zero3-save 00:00" in terminal.text
    assert progress_bar(10, False) is None
    for quiet in ("NO_COLOR", "CI", "TQDM_DISABLE"):
        monkeypatch.setenv(quiet, "1")
        assert progress_bar(10, True) is None and not progress_allowed("text")
        monkeypatch.delenv(quiet)


def test_progress_stays_off_when_stderr_is_not_a_terminal(monkeypatch):
    from llava_doctor.progress import progress_bar

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))
    assert progress_bar(10, True) is None


def test_quiet_libraries_silences_transformers_and_deepspeed_and_gives_their_state_back():
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from llava_doctor.quiet import quiet_libraries

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    deepspeed_logger = logging.getLogger("DeepSpeed")
    deepspeed_logger.addHandler(handler)
    try:
        with quiet_libraries():
            assert hf_logging.get_verbosity() == logging.ERROR and not hf_logging.is_progress_bar_enabled()
            deepspeed_logger.warning("Setting accelerator to CPU.")  # DeepSpeed prints this to stdout on import
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn_explicit("library noise", UserWarning, "x.py", 1, module="transformers.modeling_utils")
                warnings.warn_explicit("our bug", UserWarning, "y.py", 1, module="llava_doctor.api")
            assert [str(w.message) for w in caught] == ["our bug"]
        deepspeed_logger.warning("after the block")
    finally:
        deepspeed_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["after the block"]
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before
