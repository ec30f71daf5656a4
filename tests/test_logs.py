"""TrainingLog readers, LD401/LD402 on real and written logs, the `logs` command and the live LossMonitor."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from llava_doctor.api import check_logs
from llava_doctor.artifacts.training_log import parse_training_log, read_training_log
from llava_doctor.cli import main
from llava_doctor.findings import InputError
from llava_doctor.monitor import LossMonitor, LossMonitorError

NAN_STATE = """{"global_step": 40, "log_history": [
 {"epoch": 0.01, "grad_norm": 12.5, "learning_rate": 1e-05, "loss": 2.31, "step": 10},
 {"epoch": 0.02, "grad_norm": NaN, "learning_rate": 2e-05, "loss": 0.0, "step": 20},
 {"epoch": 0.03, "grad_norm": NaN, "learning_rate": 2e-05, "loss": 0.0, "step": 30},
 {"epoch": 0.03, "eval_loss": NaN, "eval_runtime": 1.0, "step": 30},
 {"epoch": 0.04, "grad_norm": Infinity, "learning_rate": 2e-05, "loss": NaN, "step": 40},
 {"epoch": 0.04, "step": 40, "train_loss": 0.77, "train_runtime": 10.0}
]}
"""

HEALTHY_STATE = {"global_step": 30, "log_history": [
    {"epoch": 0.1, "grad_norm": 4.2, "learning_rate": 2e-05, "loss": 2.4, "step": 10},
    {"epoch": 0.2, "grad_norm": 2.1, "learning_rate": 2e-05, "loss": 1.7, "step": 20},
    {"epoch": 0.2, "eval_loss": 1.8, "step": 20},
    {"epoch": 0.3, "grad_norm": 1.6, "learning_rate": 1e-05, "loss": 1.3, "step": 30},
    {"epoch": 0.3, "step": 30, "train_loss": 1.8},
]}

TEXT_LOG = """\
WARNING: tokenization mismatch: 102 vs. 104. (ignored)
model config = {'hidden_size': 4096, 'vocab_size': 32000}
{'loss': 1.9166, 'grad_norm': 3.1, 'learning_rate': 2e-05, 'epoch': 0.0}
  1%|▏  | 10/1000 [00:10<10:00, 1.6it/s]{'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': 2.6490066225165566e-08, 'epoch': 0.0}
{'loss': '0', 'grad_norm': '0', 'learning_rate': '2.649e-08', 'epoch': '0.01'}
{'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': 2e-05, 'epoch': 0.02}
{'loss': nan, 'grad_norm': -inf, 'learning_rate': 2e-05, 'epoch': 0.03}
{'eval_loss': 'nan', 'eval_runtime': '1.2', 'epoch': '0.03'}
a brace in prose {not a dict with loss}
"""


def run_cli(*args):
    result = CliRunner().invoke(main, ["logs", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def codes_of(path, **options) -> list[str]:
    return check_logs([path], **options).codes()


# --------------------------------------------------------------------------- readers


def test_trainer_state_nan_tokens_and_eval_entries_kept_apart(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(NAN_STATE)
    log = read_training_log(path)
    assert log.source == "trainer_state"
    assert [s.step for s in log.steps] == [10, 20, 30, 40]
    assert math.isnan(log.steps[1].grad_norm) and log.steps[1].loss == 0.0
    assert math.isnan(log.steps[3].loss) and log.steps[3].grad_norm == math.inf
    assert [(e.step, math.isnan(e.loss)) for e in log.evals] == [(30, True)]
    assert log.summary == {"train_loss": 0.77}
    assert log.steps[0].learning_rate == 1e-05 and log.steps[0].epoch == 0.01


def test_text_log_printed_dicts(tmp_path):
    path = tmp_path / "train.log"
    path.write_text(TEXT_LOG, encoding="utf-8")
    log = read_training_log(path)
    assert log.source == "text"
    assert [s.loss for s in log.steps[:4]] == [1.9166, 0.0, 0.0, 0.0]
    assert [s.line for s in log.steps] == [3, 4, 5, 6, 7]  # the config dict and the prose braces are skipped
    assert log.steps[2].grad_norm == 0.0 and log.steps[2].learning_rate == 2.649e-08  # transformers 5 strings
    assert math.isnan(log.steps[4].loss) and log.steps[4].grad_norm == -math.inf
    assert len(log.evals) == 1 and math.isnan(log.evals[0].loss)
    assert log.steps[1].where == "line 4"  # printed dicts carry no step


def test_jsonl_with_llamafactory_keys(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    rows = [{"current_steps": 5 * i, "total_steps": 100, "loss": 0.0, "lr": 1e-5, "epoch": 0.1 * i} for i in (1, 2, 3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    log = read_training_log(path)
    assert log.source == "jsonl"
    assert [(s.step, s.loss, s.learning_rate, s.line) for s in log.steps] == [(5, 0.0, 1e-5, 1), (10, 0.0, 1e-5, 2),
                                                                               (15, 0.0, 1e-5, 3)]
    assert codes_of(path) == ["LD401"]


def test_json_list_of_entries_and_a_single_entry():
    log = parse_training_log('[{"loss": 1.2, "step": 1}, {"loss": NaN, "step": 2}, {"eval_loss": 1.5, "step": 2}]')
    assert log.source == "json" and [s.step for s in log.steps] == [1, 2] and len(log.evals) == 1
    assert parse_training_log('{"loss": "0", "grad_norm": "nan", "step": 7}').steps[0].loss == 0.0


def test_run_directory_reads_latest_checkpoint(tmp_path):
    for step, losses in ((10, [2.0]), (20, [2.0, 0.0, 0.0, 0.0])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        history = [{"loss": v, "grad_norm": 0.0 if v == 0 else 1.0, "step": 5 * (i + 1)} for i, v in enumerate(losses)]
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    log = read_training_log(tmp_path)
    assert log.name.endswith("checkpoint-20/trainer_state.json") and len(log.steps) == 4


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff\xfe", b"hello world\n", b'{"log_history": 3}',
                                     b'{"model_type": "llava"}', b""])
def test_unreadable_logs_are_input_errors(tmp_path, content):
    path = tmp_path / "bad.log"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_training_log(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    result = run_cli(path)
    assert result.exit_code == 2
    assert result.output.startswith("llava-doctor: error: ") and result.output.count("\n") == 1


def test_missing_path_and_empty_dir_exit_2(tmp_path):
    assert run_cli(tmp_path / "nope.json").exit_code == 2
    assert "no trainer_state.json" in run_cli(tmp_path).output


def test_garbage_exits_2_in_a_real_process(tmp_path):
    path = tmp_path / "garbage.json"
    path.write_bytes(b"{\x00\x01 not json ")
    proc = subprocess.run([sys.executable, "-m", "llava_doctor", "logs", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("llava-doctor: error: ") and proc.stderr.count("\n") == 1 and not proc.stdout


# --------------------------------------------------------------------------- LD401 on the real scenario


@pytest.fixture(scope="module")
def collapse(tmp_path_factory):
    pytest.importorskip("torch")
    from llava_doctor import reproduce

    return {fixed: reproduce.build("loss-collapse", tmp_path_factory.mktemp(f"collapse-{fixed}"), fixed=fixed).out_dir
            for fixed in (False, True)}


@pytest.mark.slow
def test_ld401_fires_on_the_loss_collapse_scenario(collapse):
    report = check_logs([collapse[False] / "trainer_state.json"])
    (finding,) = report.by_code("LD401")
    assert finding.message.startswith("loss is exactly 0.0 for 4 logged steps from step 5 (grad_norm 0.0)")
    assert "every label is masked" in finding.message
    assert finding.extra["first_step"] == 5 and finding.extra["last_step"] == 20
    # the scenario's summary train_loss is the NaN mean of NaN step losses: LD402 names it
    assert [f.message for f in report.by_code("LD402")] == [
        "final train_loss is nan while every logged step loss is finite: the filter hid NaN step losses; "
        "expected a finite train_loss"]


@pytest.mark.slow
def test_the_fixed_twin_is_silent(collapse):
    report = check_logs([collapse[True]])  # the run directory
    assert report.findings == []
    assert report.stats["logs"][0]["train_steps"] == 4


# --------------------------------------------------------------------------- LD402


def test_ld402_hidden_and_direct_nan(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(NAN_STATE)
    messages = [f.message for f in check_logs([path]).by_code("LD402")]
    assert messages == [  # sorted by location
        "loss 0.0 with grad_norm nan at 2 logged steps from step 20: the step losses were NaN/Inf and "
        "logging_nan_inf_filter logged 0.0; expected a finite grad_norm",
        "eval_loss is nan at 1 evaluation from step 30; expected a finite eval_loss",
        "loss is nan at 1 logged step from step 40 (grad_norm inf); expected a finite loss",
    ]
    assert "LD401" not in codes_of(path)  # the zeros beside NaN grad norms are LD402's, not a collapse


def test_healthy_log_is_silent(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(HEALTHY_STATE))
    result = run_cli(path)
    assert result.exit_code == 0 and "LD40" not in result.output


def test_text_log_findings(tmp_path):
    path = tmp_path / "train.log"
    path.write_text(TEXT_LOG, encoding="utf-8")
    report = check_logs([path])
    (collapse,) = report.by_code("LD401")
    assert collapse.message.startswith("loss is exactly 0.0 for 3 logged steps from line 4 after loss 1.917 at line 3")
    assert {f.location for f in report.by_code("LD402")} == {"line 7", "line 8"}


# --------------------------------------------------------------------------- CLI


def test_cli_json_has_step_fields_and_min_run(tmp_path):
    path = tmp_path / "trainer_state.json"
    history = [{"loss": v, "grad_norm": 0.0 if v == 0 else 2.0, "learning_rate": 1e-5, "epoch": i / 10, "step": 10 * i}
               for i, v in enumerate([2.2, 0.0, 0.0, 1.5], start=1)]
    path.write_text(json.dumps({"log_history": history}))
    assert run_cli(path).exit_code == 0  # two zeros: below the default run of 3
    result = run_cli(path, "--min-run", "2", "--format", "json")
    assert result.exit_code == 1
    (finding,) = json.loads(result.output)["findings"]
    assert finding["code"] == "LD401" and finding["location"] == "step 20"
    assert finding["first_step"] == 20 and finding["last_step"] == 30 and finding["logged_steps"] == 2
    assert run_cli(path, "--min-run", "2", "--ignore", "LD401").exit_code == 0
    assert run_cli(path, "--min-run", "0").exit_code == 2  # click usage error


def test_logs_is_listed_in_help():
    assert "logs" in CliRunner().invoke(main, ["--help"]).output


# --------------------------------------------------------------------------- live hook


def test_monitor_raises_at_the_step_the_collapse_completes():
    monitor = LossMonitor(min_run=3)
    losses = [2.1, 1.9, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(LossMonitorError) as info:
        for step, loss in enumerate(losses, start=1):
            monitor.observe(step * 10, loss, 0.0 if loss == 0 else 1.3)
    assert monitor.steps[-1].step == 50  # the third zero in a row, not later
    assert info.value.finding.code == "LD401"
    assert "from step 30 after loss 1.9 at step 20 (grad_norm 0.0)" in str(info.value)


def test_monitor_warns_once_and_ignores_a_recovered_overflow():
    monitor = LossMonitor(on_problem="warn")
    rows = [(2.3, 1.0), (2.2, math.inf), (2.1, 1.1), (0.0, math.nan), (0.0, math.nan)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reported = [[f.code for f in monitor.observe(step, loss, norm)] for step, (loss, norm) in enumerate(rows, 1)]
    assert reported == [[], [], [], ["LD402"], []]
    assert len(caught) == 1 and "LD402" in str(caught[0].message) and "step 4" in str(caught[0].message)
    assert [f.code for f in monitor.findings] == ["LD402"] and len(monitor.log.steps) == 5


@pytest.mark.slow  # importing transformers' trainer_callback pulls in torch (~10 s on a cold, shared CPU)
def test_monitor_as_trainer_callback():
    pytest.importorskip("transformers")
    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

    monitor = LossMonitor()
    handler = CallbackHandler([monitor], model=None, processing_class=None, optimizer=None, lr_scheduler=None)
    state, control = TrainerState(), TrainerControl()
    args = SimpleNamespace()
    handler.on_train_begin(args, state, control)  # events other than on_log are no-ops
    with pytest.raises(LossMonitorError, match="LD401"):
        for step in range(1, 6):
            state.global_step = step
            handler.on_step_end(args, state, control)
            handler.on_log(args, state, control, logs={"loss": 0.0, "grad_norm": 0.0, "learning_rate": 2e-5,
                                                       "epoch": step / 100})
    assert state.global_step == 3
    handler.on_log(args, state, control, logs={"eval_loss": 1.0})  # eval logs are not train steps
    assert len(monitor.steps) == 3
