"""LlavaDoctorCallback: in a real transformers.Trainer, in plain loops, with the real DeepSpeed engine."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from llava_doctor import LlavaDoctorCallback, LlavaDoctorError
from llava_doctor.api import check_logs
from llava_doctor.findings import Severity

HERE = Path(__file__).resolve().parent


def codes(findings) -> list[str]:
    return sorted(f.code for f in findings)


def runtime_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "llava-doctor" in str(w.message)]


# --------------------------------------------------------------------------- the hook itself (no Trainer)


def test_importing_the_callback_imports_neither_torch_nor_transformers():
    code = ("import sys; from llava_doctor import LlavaDoctorCallback; LlavaDoctorCallback(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="on_problem"):
        LlavaDoctorCallback(on_problem="abort")
    with pytest.raises(Exception, match="LD999"):
        LlavaDoctorCallback(select=("LD999",))
    with pytest.raises(ValueError, match="stage"):
        LlavaDoctorCallback(stage="pre-train")


def test_plain_loop_labels_raise_at_the_masked_batch():
    torch = pytest.importorskip("torch")
    doctor = LlavaDoctorCallback(on_problem="raise")
    good = {"labels": torch.tensor([[-100, -100, 5, 6], [-100, 7, 8, -100]])}
    assert doctor.observe_batch(good, step=1) == []
    # position 0 does not count: the causal shift drops it, so [9, -100, ...] supervises nothing
    masked = {"labels": torch.tensor([[9, -100, -100, -100], [-100, -100, -100, -100]])}
    with pytest.raises(LlavaDoctorError) as info, pytest.warns(RuntimeWarning, match=r"LD104 warning: 2 of 2 samples at "
                                                                                      r"step 2 .*micro-batch 0: position 0, 1"):
        doctor.observe_batch(masked, step=2)
    assert info.value.finding.code == "LD403" and "at step 2" in str(info.value)
    assert codes(doctor.findings) == ["LD104", "LD403"]  # the samples warn first, then the batch raises


def test_per_code_dedup_and_severity_overrides():
    torch = pytest.importorskip("torch")
    doctor = LlavaDoctorCallback(on_problem="stop", severity={"LD403": "warning"})
    bad = torch.full((2, 5), -100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 4):
            doctor.observe_batch(bad, step=step)
    assert [(f.code, f.severity, f.extra["first_step"]) for f in doctor.findings] == [
        ("LD104", Severity.WARNING, 1), ("LD403", Severity.WARNING, 1)]  # once, at the step it first fired
    assert not doctor.should_stop  # a warning is below fail_on=error
    assert len(runtime_warnings(caught)) == 2
    assert doctor.log.labels_checked and [w.last_step for w in doctor.log.labels] == [1, 2, 3]


def test_observe_keeps_the_loss_monitor_behaviour():
    doctor = LlavaDoctorCallback(on_problem="stop", select=("LD4",))
    with pytest.warns(RuntimeWarning, match="LD401 error: .* - stopping the run"):
        for step, loss in enumerate([2.1, 1.9, 0.0, 0.0, 0.0, 0.0], start=1):
            doctor.observe(step, loss, 0.0 if loss == 0 else 1.3)
            if doctor.should_stop:
                break
    assert step == 5 and [f.code for f in doctor.findings if f.severity >= Severity.WARNING] == ["LD401"]  # 3rd zero
    (note,) = [f for f in doctor.findings if f.severity == Severity.INFO]  # no model given: what was not judged
    assert note.code == "LD405" and "first logged loss 2.1 at step 1 not judged" in note.message
    report = doctor.report()
    assert "LD401" in report.codes() and report.artifacts == ["training run"]


def test_loss_monitor_is_a_deprecated_alias():
    from llava_doctor.monitor import LossMonitor, LossMonitorError

    with pytest.warns(DeprecationWarning, match="LlavaDoctorCallback"):
        monitor = LossMonitor(min_run=2)
    assert isinstance(monitor, LlavaDoctorCallback) and LossMonitorError is LlavaDoctorError
    with pytest.raises(LossMonitorError, match="LD401"):
        for step in range(1, 4):
            monitor.observe(step, 0.0, 0.0)
    monitor.on_substep_end(None, None, None)  # events it does not use are no-ops


# --------------------------------------------------------------------------- a real transformers.Trainer


@pytest.fixture(scope="module")
def hf_setup():
    pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    import _train_fixtures as fx

    hf_logging.set_verbosity_error()
    config = fx.llava_config()
    dataset = fx.ImageTextDataset(config)
    # weights that learned a little (a from-config model is rightly flagged by LD304/LD305 at finetune)
    return fx, config, dataset, fx.trained_state(fx.tiny_llava(), dataset)


def run_trainer(hf_setup, tmp_path, *, mask_from=None, model=None, args_class=None, **callback_kwargs):
    from transformers import Trainer

    fx, config, dataset, state = hf_setup
    doctor = LlavaDoctorCallback(**callback_kwargs)
    args = fx.training_args(tmp_path, args_class=args_class)
    trainer = Trainer(model=model or fx.finetune_model(state), args=args, train_dataset=dataset,
                      data_collator=fx.collator(mask_from), callbacks=[doctor])
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.train()
        except LlavaDoctorError as exc:
            error = exc
    return doctor, trainer, error, runtime_warnings(caught)


@pytest.fixture(scope="module")
def healthy_run(hf_setup, tmp_path_factory):
    from transformers import Trainer

    fx, config, dataset, state = hf_setup
    out = tmp_path_factory.mktemp("healthy")
    doctor = LlavaDoctorCallback(on_problem="stop", stage="finetune")
    args = fx.training_args(out, save_strategy="steps", save_steps=4, per_device_train_batch_size=2,
                            gradient_accumulation_steps=2)  # 2 micro-batches of 2 per optimizer step
    trainer = Trainer(model=fx.finetune_model(state), args=args, train_dataset=dataset, data_collator=fx.collator(), callbacks=[doctor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return doctor, trainer, runtime_warnings(caught), out


@pytest.mark.slow
def test_healthy_trainer_run_is_silent(healthy_run):
    doctor, trainer, warned, _ = healthy_run
    assert trainer.state.global_step == 4 and not doctor.should_stop
    assert [f for f in doctor.findings if f.severity >= Severity.WARNING] == [] and warned == []
    assert doctor.inspection is not None and doctor.inspection.stats["live"]["family"]  # the live checks ran
    first = trainer.state.log_history[0]
    assert first["step"] == 1  # the callback asked for step 1 (LD405 judges the first step's loss)
    assert first["labels_batches"] == 2 and first["labels_samples"] == 4 and first["labels_unsupervised_batches"] == 0
    assert first["labels_supervised_tokens"] == 4 * 6  # the 6 answer ids of each sample (none at position 0)


@pytest.mark.slow
def test_the_trainers_own_trainer_state_is_checked_the_same_way(healthy_run):
    *_, out = healthy_run
    state = out / "checkpoint-4" / "trainer_state.json"
    report = check_logs([out])  # the run directory: its latest checkpoint's trainer_state.json
    assert report.at_or_above(Severity.WARNING) == [] and report.stats["logs"][0]["label_statistics"]
    # transformers 5 writes no _name_or_path into config.json: at ln V the first loss is named, not judged
    assert [f.code for f in report.findings] in ([], ["LD405"])
    assert report.stats["logs"][0]["model"]["vocab_size"] == 128  # the config.json the Trainer saved beside it
    # the same history with one window's labels masked, as a run without supervision writes it
    data = json.loads(state.read_text())
    data["log_history"][1].update(labels_unsupervised_batches=1, labels_unsupervised_samples=4,
                                  labels_first_unsupervised_batch_step=2, labels_first_unsupervised_sample_step=2)
    state.write_text(json.dumps(data))
    (finding,) = check_logs([state]).by_code("LD403")
    assert finding.message.startswith("1 of 8 micro-batches in steps 1..4 has no supervised token (every label -100), "
                                      "first at step 2")


@pytest.mark.slow
@pytest.mark.parametrize("on_problem", ["stop", "raise", "warn"])
def test_all_labels_masked_from_step_3(hf_setup, tmp_path, on_problem):
    doctor, trainer, error, warned = run_trainer(hf_setup, tmp_path, mask_from=3, on_problem=on_problem)
    ld403 = next(f for f in doctor.findings if f.code == "LD403")
    assert ld403.extra["first_step"] == 3 and "at step 3" in ld403.message
    if on_problem == "stop":
        assert trainer.state.global_step == 3 and doctor.should_stop and error is None  # ended cleanly at that step
        assert any("LD403" in w and "stopping the run" in w for w in warned)
    elif on_problem == "raise":
        assert error is not None and error.finding is ld403 and trainer.state.global_step == 3
    else:
        assert trainer.state.global_step == 4 and error is None and not doctor.should_stop  # it went on
        assert any("LD403" in w for w in warned)
        entry = next(e for e in trainer.state.log_history if e.get("step") == 4 and "loss" in e)
        assert entry["labels_unsupervised_batches"] == 2 and entry["labels_first_unsupervised_batch_step"] == 3


@pytest.mark.slow
def test_stage_from_llava_training_arguments(hf_setup, tmp_path):
    from transformers import TrainingArguments

    @dataclass
    class LlavaTrainingArguments(TrainingArguments):  # the extras LLaVA's train.py adds
        tune_mm_mlp_adapter: bool = True
        lora_enable: bool = False

    args_class = LlavaTrainingArguments
    fx, state = hf_setup[0], hf_setup[3]
    doctor, trainer, error, _ = run_trainer(hf_setup, tmp_path, args_class=args_class, on_problem="raise")
    assert error is not None and error.finding.code == "LD301" and trainer.state.global_step == 0  # before any step
    assert "under stage pretrain" in error.finding.message
    model = fx.finetune_model(state)
    model.requires_grad_(False)
    projector = next(m for name, m in model.named_modules() if name.endswith("multi_modal_projector"))
    projector.requires_grad_(True)  # what tune_mm_mlp_adapter leaves trainable
    doctor, trainer, error, warned = run_trainer(hf_setup, tmp_path, model=model, args_class=args_class, on_problem="raise")
    assert error is None and trainer.state.global_step == 4 and warned == []


# --------------------------------------------------------------------------- the bundled core: plain loop, DeepSpeed


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    pytest.importorskip("torch")
    from llava_doctor.core.configs import prepare_vision_tower, tiny_config
    from llava_doctor.core.data import ConversationDataset, build_samples, collate
    from llava_doctor.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    config = tiny_config(vision_tower=prepare_vision_tower(tmp_path_factory.mktemp("towers"), "clip", pretrain_steps=0))

    def masking(from_step: int | None):
        calls = iter(range(1, 10**6))

        def collate_fn(items):
            batch = collate(items, tokenizer.pad_token_id)
            if from_step is not None and next(calls) >= from_step:
                batch["labels"].fill_(-100)
            return batch

        return collate_fn

    return config, ConversationDataset(build_samples(32, seed=5), tokenizer), masking


def core_model(config, stage="finetune"):
    from llava_doctor.core.model import build_model
    from llava_doctor.core.stages import apply_stage

    return apply_stage(build_model(config, seed=0), stage)


@pytest.mark.slow
def test_core_plain_loop_stops_at_the_step(core, tmp_path):
    from llava_doctor.core.train import TrainConfig, train, write_trainer_state

    config, dataset, masking = core
    # the labels and the log; the live checks rightly call this from-config model's random tower and
    # projector untrained (LD304/LD305), which the Trainer tests cover with trained weights
    doctor = LlavaDoctorCallback(on_problem="stop", select=("LD1", "LD4"))
    model = core_model(config)
    doctor.on_train_begin(model=model)
    train_config = TrainConfig(steps=8, batch_size=4, warmup_steps=1, logging_steps=2)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = train(model, dataset, train_config, collate_fn=masking(4), on_step=doctor.observe_step)
    assert result.global_step == 4 and len(result.losses) == 4 and math.isnan(result.losses[-1])
    # the labels are read before the step's loss: LD403 fires on them, then LD402 on the NaN loss they give
    assert [f.code for f in doctor.findings] == ["LD104", "LD403", "LD402"]
    assert doctor.findings[1].extra["first_step"] == 4 and "loss is nan at 1 logged step from step 4" in doctor.findings[2].message
    assert doctor.model.vocab_size == config.vocab_size and doctor.model.pretrained is False
    # the log the core wrote has no label counts: logs says LD403 was not checked instead of passing
    state = write_trainer_state(tmp_path / "trainer_state.json", result, train_config)
    (note,) = check_logs([state]).by_code("LD403")
    assert note.severity == Severity.INFO and "not checked" in note.message


@pytest.mark.slow
def test_core_first_loss_of_a_loaded_model_that_is_random(core, tmp_path):
    """LD405: a model loaded with from_pretrained whose weights are random (the save held a fresh
    model) starts at ln V; its twin, loaded from weights that learned, starts far below."""
    from llava_doctor.core.model import model_class_for
    from llava_doctor.core.train import TrainConfig, train

    config, dataset, masking = core
    fresh, learned = core_model(config), core_model(config)
    train(learned, dataset, TrainConfig(steps=30, batch_size=8, warmup_steps=1, logging_steps=10))
    verdicts = {}
    for name, source in (("fresh", fresh), ("learned", learned)):
        source.save_pretrained(tmp_path / name)
        loaded = model_class_for(config).from_pretrained(tmp_path / name)
        doctor = LlavaDoctorCallback(on_problem="warn", select=("LD405",))
        doctor.on_train_begin(model=loaded)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            train(loaded, dataset, TrainConfig(steps=1, batch_size=4, warmup_steps=1, learning_rate=0.0),
                  on_step=doctor.observe_step)
        assert doctor.model.pretrained is True
        verdicts[name] = [f.message for f in doctor.findings]
    assert len(verdicts["fresh"]) == 1 and "as if its LLM or head were randomly initialised" in verdicts["fresh"][0]
    assert verdicts["learned"] == []


@pytest.mark.slow
def test_core_grad_norm_zero_when_only_an_unused_tower_layer_trains(core, tmp_path):
    """LD404: with mm_vision_select_layer -2 the tower's last layer never reaches the loss."""
    from llava_doctor.core.train import TrainConfig, train, write_trainer_state

    config, dataset, _ = core
    model = core_model(config)
    model.requires_grad_(False)
    tower_layers = [m for name, m in model.named_modules() if name.startswith("model.vision_tower.")
                    and name.endswith("encoder.layers")]
    tower_layers[0][-1].requires_grad_(True)
    model.enable_input_require_grads()  # as LLaVA's train.py does for gradient checkpointing: the loss has a graph
    train_config = TrainConfig(steps=4, batch_size=4, warmup_steps=1, logging_steps=1)
    doctor = LlavaDoctorCallback(select=("LD404",))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = train(model, dataset, train_config, on_step=doctor.observe_step)
    assert set(result.grad_norms) == {0.0} and all(loss > 1 for loss in result.losses)
    (live,) = doctor.findings
    assert live.code == "LD404" and "grad_norm is 0.0 for 3 logged steps from step 1" in live.message
    state = write_trainer_state(tmp_path / "trainer_state.json", result, train_config)
    assert check_logs([state], select=("LD404",)).codes() == ["LD404"]


@pytest.mark.slow
def test_deepspeed_zero3_engine_world1(cpu_dist, core):
    from llava_doctor.core.train import TrainConfig, build_zero3_model, deepspeed_config, train_deepspeed

    config, dataset, masking = core
    ds_config = deepspeed_config(3)
    model = build_zero3_model(lambda: core_model(config), ds_config)
    doctor = LlavaDoctorCallback(on_problem="stop", ignore=("LD304", "LD305"))  # a from-config tower and projector
    doctor.on_train_begin(model=model)
    assert doctor.model.vocab_size == config.vocab_size  # ds_shape, not the empty local shard
    assert doctor.inspection is not None and doctor.inspection.stats["live"]["artifact"]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        engine, result = train_deepspeed(model, dataset, TrainConfig(steps=4, batch_size=4, warmup_steps=1),
                                          ds_config=ds_config, collate_fn=masking(2), on_step=doctor.observe_step)
    assert result.global_step == 2 and doctor.should_stop
    assert [f.code for f in doctor.findings if f.severity == Severity.ERROR] == ["LD403", "LD402"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_deepspeed_world2_ranks_reduce_and_rank0_reports(tmp_path):
    from _torchrun import run_torchrun

    returncode, _, stderr = run_torchrun([str(HERE / "_callback_worker.py"), str(tmp_path)])
    assert returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in ranks:  # rank 1 alone masked its micro-batch at step 2: both ranks see it and stop together
        assert report["global_step"] == 2 and report["should_stop"]
        # rank 1's NaN loss is in the all-reduced mean both ranks log: LD402 on both too
        assert [(code, step) for code, step, _ in report["findings"]] == [("LD104", 2), ("LD403", 2), ("LD402", 2)]
        assert report["findings"][0][2].startswith("4 of 8 samples at step 2 have no supervised token")
        assert report["findings"][1][2].startswith("1 of 2 micro-batches at step 2 has no supervised token")
    assert ranks[0]["warnings"] == 3 and ranks[1]["warnings"] == 0  # rank 0 reports, once per code
