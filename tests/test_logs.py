"""TrainingLog readers, LD401/LD402 on real and written logs, the `logs` command and the live LossMonitor."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from llava_doctor.api import check_logs
from llava_doctor.artifacts.training_log import parse_training_log, read_training_log
from llava_doctor.cli import main
from llava_doctor.findings import InputError, Severity
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


def errors_of(path, **options) -> list[str]:
    """Codes at warning or above (the info lines say what could not be checked)."""
    return [f.code for f in check_logs([path], **options).at_or_above(Severity.WARNING)]


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
    assert errors_of(path) == ["LD401"]


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
    assert report.at_or_above(Severity.WARNING) == []
    assert [f.code for f in report.findings] == ["LD403", "LD405"]  # info: no label counts, no config.json there
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
    assert result.exit_code == 0 and "error" not in result.output.lower().replace("0 error(s)", "")
    # what it could not check it says: no label counts in a plain HF log, no config.json for the vocabulary
    report = check_logs([path])
    assert [(f.code, f.severity) for f in report.findings] == [("LD403", Severity.INFO), ("LD405", Severity.INFO)]
    assert "not checked" in report.findings[0].message and "not judged" in report.findings[1].message


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
    (finding,) = [f for f in json.loads(result.output)["findings"] if f["severity"] != "info"]
    assert finding["code"] == "LD401" and finding["location"] == "step 20"
    assert finding["first_step"] == 20 and finding["last_step"] == 30 and finding["logged_steps"] == 2
    assert run_cli(path, "--min-run", "2", "--ignore", "LD401").exit_code == 0
    assert run_cli(path, "--min-run", "0").exit_code == 2  # click usage error


def test_logs_is_listed_in_help():
    assert "logs" in CliRunner().invoke(main, ["--help"]).output


# --------------------------------------------------------------------------- the deprecated LossMonitor (now LlavaDoctorCallback)


@pytest.mark.filterwarnings("ignore:llava_doctor.monitor.LossMonitor is deprecated:DeprecationWarning")
def test_monitor_raises_at_the_step_the_collapse_completes():
    monitor = LossMonitor(min_run=3)
    losses = [2.1, 1.9, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(LossMonitorError) as info:
        for step, loss in enumerate(losses, start=1):
            monitor.observe(step * 10, loss, 0.0 if loss == 0 else 1.3)
    assert monitor.steps[-1].step == 50  # the third zero in a row, not later
    assert info.value.finding.code == "LD401"
    assert "from step 30 after loss 1.9 at step 20 (grad_norm 0.0)" in str(info.value)


@pytest.mark.filterwarnings("ignore:llava_doctor.monitor.LossMonitor is deprecated:DeprecationWarning")
def test_monitor_warns_once_and_ignores_a_recovered_overflow():
    monitor = LossMonitor(on_problem="warn")
    rows = [(2.3, 1.0), (2.2, math.inf), (2.1, 1.1), (0.0, math.nan), (0.0, math.nan)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reported = [[f.code for f in monitor.observe(step, loss, norm)] for step, (loss, norm) in enumerate(rows, 1)]
    assert reported == [[], [], [], ["LD402"], []]
    assert len(caught) == 1 and "LD402" in str(caught[0].message) and "step 4" in str(caught[0].message)
    assert [f.code for f in monitor.findings] == ["LD402"] and len(monitor.log.steps) == 5


@pytest.mark.filterwarnings("ignore:llava_doctor.monitor.LossMonitor is deprecated:DeprecationWarning")
@pytest.mark.slow  # importing transformers' trainer_callback pulls in torch (~10 s on a cold, shared CPU)
def test_monitor_as_trainer_callback():
    pytest.importorskip("transformers")
    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

    monitor = LossMonitor()
    handler = CallbackHandler([monitor], None, None, None, None)  # model, processing_class (4.x: tokenizer), optimizer, lr_scheduler
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


# --------------------------------------------------------------------------- a log cut short (LD406), hostile inputs


@pytest.fixture(scope="module")
def core_state(tmp_path_factory) -> bytes:
    """A trainer_state.json as the bundled core's training writes it (HF's layout: indent 2, log_history mid-file)."""
    pytest.importorskip("torch")
    from llava_doctor.core.train import TrainConfig, TrainResult, write_trainer_state

    history = [{"epoch": i / 10, "grad_norm": 2.0 - i / 10, "learning_rate": 2e-5, "loss": 3.0 - i / 5, "step": 10 * i}
               for i in range(1, 9)]
    result = TrainResult(log_history=history + [{"epoch": 0.8, "step": 80, "train_loss": 2.3}], global_step=80, epoch=0.8)
    path = write_trainer_state(tmp_path_factory.mktemp("state") / "trainer_state.json", result, TrainConfig(steps=80))
    return path.read_bytes()


def test_complete_core_state_reads_whole(core_state):
    log = parse_training_log(core_state.decode())
    assert log.source == "trainer_state" and len(log.steps) == 8 and log.cuts == () and log.summary == {"train_loss": 2.3}


@pytest.mark.parametrize("where", ["inside the 5th entry", "after an entry's brace", "after log_history"])
def test_truncated_trainer_state_is_a_finding_not_a_clean_log(tmp_path, core_state, where):
    text = core_state.decode()
    entries = [m.start() for m in re.finditer(r'\{\s*"epoch"', text)]
    cut = {"inside the 5th entry": entries[4] + 40, "after an entry's brace": text.index("}", entries[2]) + 1,
           "after log_history": text.index('"logging_steps"') + 10}[where]
    path = tmp_path / "trainer_state.json"
    path.write_bytes(core_state[:cut])
    report = check_logs([path])
    (finding,) = report.by_code("LD406")
    read = {"inside the 5th entry": ") inside log_history: read only 4 log_history entries (steps 10..40)",
            "after an entry's brace": ") inside log_history: read only 3 log_history entries (steps 10..30)",
            "after log_history": "): read only 9 log_history entries (steps 10..80)"}[where]
    assert finding.severity == Severity.ERROR and read in finding.message
    assert f"log cut off at the end of the file (byte {cut:,}, line " in finding.message
    assert run_cli(path).exit_code == 1


def test_corrupt_trainer_state_says_where(tmp_path, core_state):
    path = tmp_path / "trainer_state.json"
    path.write_bytes(core_state.replace(b'"loss": 2.2', b'"loss": 2.2x', 1))
    (finding,) = check_logs([path]).by_code("LD406")
    assert finding.message.startswith("log stops being valid JSON at line ")
    assert "inside log_history: read only 3 log_history entries (steps 10..30) before it" in finding.message


def test_state_cut_before_any_entry_is_unreadable(tmp_path, core_state):
    path = tmp_path / "trainer_state.json"
    path.write_bytes(core_state[: core_state.index(b'"log_history"') + 10])
    result = run_cli(path)
    assert result.exit_code == 2 and "cut off at the end of the file" in result.output
    assert result.output.count("\n") == 1


def run_logs_process(path, *, timeout=60, memory_bytes=None):
    """`llava-doctor logs PATH` in a child process (optionally under an address-space limit); its peak RSS."""
    import resource

    def limit():
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "llava_doctor", "logs", str(path)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return proc, (peak_kib if peak_kib > before else None)


@pytest.mark.parametrize("kind", ["fifo", "char device via symlink", "fifo as a run dir's trainer_state.json"])
def test_special_files_are_refused_without_hanging(tmp_path, kind):
    import os

    if kind == "fifo":
        path = tmp_path / "train.log"
        os.mkfifo(path)
    elif kind == "char device via symlink":
        path = tmp_path / "train.log"
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(tmp_path / "trainer_state.json")
        path = tmp_path
    proc, _ = run_logs_process(path, timeout=60)  # a blocking open of a FIFO would hang here
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("llava-doctor: error: ") and proc.stderr.count("\n") == 1
    assert ("a FIFO" if "fifo" in kind else "a character device") in proc.stderr


@pytest.mark.slow
def test_a_2gb_log_is_streamed_in_bounded_memory(tmp_path):
    """2 GiB of log (a sparse hole: NUL bytes, no newline) between real log lines, read under a 1 GiB
    address-space limit: lines are streamed and an over-long line is cut, never held whole."""
    path = tmp_path / "train.log"
    size = 2 * 1024**3
    with open(path, "wb") as fh:
        fh.write(b"{'loss': 2.31, 'grad_norm': 1.2, 'learning_rate': 2e-05, 'epoch': 0.01}\n")
        fh.seek(size)
        fh.write(b"\n" + b"{'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': 2e-05, 'epoch': 0.02}\n" * 3)
    proc, peak_kib = run_logs_process(path, timeout=240, memory_bytes=1024**3)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "LD401" in proc.stdout and "loss is exactly 0.0 for 3 logged steps from line 3" in proc.stdout
    assert "LD406" in proc.stdout and "lines longer than the reader's limit from line 2" in proc.stdout
    assert peak_kib is None or peak_kib < 400 * 1024  # KiB: well under the file's size


def test_one_unreadable_log_among_several(tmp_path):
    good = tmp_path / "trainer_state.json"
    good.write_text(json.dumps({"log_history": [{"loss": 0.0, "grad_norm": 0.0, "step": s} for s in (1, 2, 3)]}))
    missing = tmp_path / "nope.json"
    report = check_logs([missing, good])
    assert report.input_errors == [(str(missing), f"{missing}: no such file or directory")]
    assert "LD401" in report.codes()
    result = run_cli(missing, good)
    assert result.exit_code == 2 and "LD401" in result.output and "nope.json" in result.output


# --------------------------------------------------------------------------- LLaVA's tokenization-mismatch prints (LD101)


LLAVA_LOG = """\
[2024-05-12 10:00:01,234] [INFO] [real_accelerator.py:161:get_accelerator] Setting ds_accelerator to cuda (auto detect)
WARNING: tokenization mismatch: 102 vs. 104. (ignored)
WARNING: tokenization mismatch: 87 vs. 89. (ignored)WARNING: tokenization mismatch: 55 vs. 57. (ignored)
{'loss': 1.9166, 'learning_rate': 2e-05, 'epoch': 0.0}
WARNING: tokenization mismatch: 230 vs. 233.(#turns=3 ignored)
warning: tokenization mismatch: 12 vs. 14. (ignored)
WARNING: tokenization mismatch: 77 vs. 80. #turn = 2. (ignored)
"""


def test_llava_tokenization_mismatch_prints_are_counted(tmp_path):
    path = tmp_path / "train.log"
    path.write_text(LLAVA_LOG)
    log = read_training_log(path)
    assert log.tokenization_mismatches.count == 6  # two prints on one line (interleaved ranks/workers) count twice
    assert log.tokenization_mismatches.examples[0] == (102, 104, None, 2)
    (finding,) = check_logs([path]).by_code("LD101")
    assert finding.message.startswith("6 samples dropped: LLaVA printed `WARNING: tokenization mismatch` 6 times "
                                      "(lines 2..7, e.g. 102 vs. 104, 87 vs. 89, 55 vs. 57)")
    assert finding.severity == Severity.ERROR and finding.extra["samples_dropped"] == 6


def test_a_log_of_only_mismatch_prints_is_still_checked(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("WARNING: tokenization mismatch: 102 vs. 104. (ignored)\n" * 5)
    assert errors_of(path) == ["LD101"]


# --------------------------------------------------------------------------- the first loss with config.json beside (LD405)


def state_with_config(tmp_path, first_loss: float, config: dict | None) -> Path:
    history = [{"loss": first_loss, "grad_norm": 3.0, "step": 1}, {"loss": first_loss * 0.9, "grad_norm": 2.0, "step": 10}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path / "trainer_state.json"


def test_first_loss_at_ln_v_for_a_model_loaded_from_pretrained(tmp_path):
    """transformers 4.x writes _name_or_path: this run loaded vicuna and still started at ln(32000)."""
    config = {"model_type": "llava", "vocab_size": 32000, "hidden_size": 4096, "initializer_range": 0.02,
              "_name_or_path": "lmsys/vicuna-7b-v1.5"}
    (finding,) = check_logs([state_with_config(tmp_path, 10.3388, config)]).by_code("LD405")
    assert finding.severity == Severity.ERROR and "is 100% of ln(32000) = 10.37" in finding.message
    assert "config.json beside the log" in finding.message


def test_first_loss_judged_with_an_hf_llava_config_and_silent_when_plausible(tmp_path):
    config = {"model_type": "llava", "text_config": {"vocab_size": 32064, "hidden_size": 4096}}
    assert check_logs([state_with_config(tmp_path, 1.93, config)]).by_code("LD405") == []
    (finding,) = check_logs([state_with_config(tmp_path, 61.0, config)]).by_code("LD405")
    assert "is above 13.49 (ln(32064) = 10.38 plus 3.11 nats)" in finding.message


def test_first_loss_without_config_says_it_was_not_judged(tmp_path):
    (note,) = check_logs([state_with_config(tmp_path, 61.0, None)]).by_code("LD405")
    assert note.severity == Severity.INFO
    assert note.message == ("first logged loss 61 at step 1 not judged: no config.json beside the log gives the "
                            "vocabulary size")


def test_a_fifo_in_place_of_config_json_is_named_not_read(tmp_path):
    import os

    state = state_with_config(tmp_path, 2.3, None)
    os.mkfifo(tmp_path / "config.json")
    proc, _ = run_logs_process(state, timeout=60)  # opening the FIFO for reading would block
    assert proc.returncode == 0, proc.stderr
    assert "not judged: config.json beside the log is unreadable" in proc.stdout and "a FIFO" in proc.stdout
