"""Training loops of the bundled core: plain PyTorch and the real DeepSpeed engine (ZeRO-2/3, world 1 and 2)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from llava_doctor.core.configs import prepare_vision_tower, tiny_config
from llava_doctor.core.data import IGNORE_INDEX, ConversationDataset, build_samples
from llava_doctor.core.model import build_model
from llava_doctor.core.savers import CORE_TOWER, running_tower_key
from llava_doctor.core.stages import apply_stage, trainable_summary
from llava_doctor.core.tokenizer import load_tokenizer
from llava_doctor.core.train import (
    TrainConfig,
    _LogWindow,
    batch_indices,
    build_zero3_model,
    deepspeed_config,
    train,
    train_deepspeed,
    write_trainer_state,
)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny_config(vision_tower=prepare_vision_tower(tmp_path_factory.mktemp("towers"), "clip", pretrain_steps=0))


@pytest.fixture(scope="module")
def dataset():
    return ConversationDataset(build_samples(32, seed=11), load_tokenizer())


def small(steps=8, **kwargs):
    return TrainConfig(steps=steps, batch_size=4, warmup_steps=2, logging_steps=2, **kwargs)


def test_plain_loop_learns_logs_and_is_deterministic(config, dataset, tmp_path):
    runs = []
    for _ in range(2):
        model = apply_stage(build_model(config, seed=0), "finetune")
        runs.append(train(model, dataset, small(12, learning_rate=3e-3)))
    result = runs[0]
    assert runs[1].losses == result.losses  # same seed, same numbers
    assert result.last_loss < result.first_loss - 1.0
    logs = [e for e in result.log_history if "loss" in e]
    assert [e["step"] for e in logs] == [2, 4, 6, 8, 10, 12]
    assert set(logs[0]) == {"loss", "grad_norm", "learning_rate", "epoch", "step"}
    assert logs[0]["epoch"] == 0.25 and all(math.isfinite(e["grad_norm"]) and e["grad_norm"] > 0 for e in logs)
    assert logs[-1]["learning_rate"] < logs[0]["learning_rate"]
    state = json.loads(write_trainer_state(tmp_path / "trainer_state.json", result, small(12)).read_text())
    assert state["global_step"] == 12 and state["log_history"] == json.loads(json.dumps(result.log_history))


def test_pretrain_stage_changes_only_the_projector(config, dataset):
    model = apply_stage(build_model(config, seed=0), "pretrain")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, dataset, small(3))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight", "model.mm_projector.2.bias"}


def test_all_masked_labels_log_zero_loss_like_hf(config, dataset):
    """labels all -100 -> NaN loss (mean over no tokens) with zero gradients; HF's logging_nan_inf_filter
    turns the window into a logged 0.0."""

    def masked(items):
        from llava_doctor.core.data import collate

        batch = collate(items, dataset.tokenizer.pad_token_id)
        batch["labels"].fill_(IGNORE_INDEX)
        return batch

    model = apply_stage(build_model(config, seed=0), "finetune")
    result = train(model, dataset, small(4), collate_fn=masked)
    assert all(math.isnan(loss) for loss in result.losses)
    assert [e["loss"] for e in result.log_history if "loss" in e] == [0.0, 0.0]
    assert all(e["grad_norm"] == 0.0 for e in result.log_history if "grad_norm" in e)


def test_log_window_averages_and_filters():
    window = _LogWindow(TrainConfig(steps=4, logging_steps=2), steps_per_epoch=4)
    for step, loss in enumerate([2.0, 4.0, 1.0, float("nan")], start=1):
        window.add(step, loss, 1.0, 0.1)
    # HF: the NaN step adds tr_loss / (1 + steps since the last log) = 1.0 / 2, so (1.0 + 0.5) / 2
    assert [e["loss"] for e in window.history] == [3.0, 0.75]


def test_batch_indices_shard_ranks_without_overlap():
    rank0, rank1 = batch_indices(10, 2, seed=0, rank=0, world_size=2), batch_indices(10, 2, seed=0, rank=1, world_size=2)
    first = [next(rank0) + next(rank1) for _ in range(2)]
    assert len(set(first[0] + first[1])) == 8
    with pytest.raises(ValueError, match="smaller than one global batch"):
        next(batch_indices(3, 2, seed=0, world_size=2))


def test_deepspeed_zero2_world1(cpu_dist, config, dataset, tmp_path):
    model = apply_stage(build_model(config, seed=0), "finetune")
    engine, result = train_deepspeed(model, dataset, small(2), ds_config=deepspeed_config(2))
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    engine.save_checkpoint(str(tmp_path))
    step_dir = tmp_path / "global_step2"
    assert (step_dir / "mp_rank_00_model_states.pt").is_file()
    assert (step_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    states = torch.load(step_dir / "mp_rank_00_model_states.pt", weights_only=True)
    assert states["module"]["model.mm_projector.0.weight"].shape == (64, 64)  # stage 2 saves full tensors
    assert CORE_TOWER + running_tower_key("embeddings.patch_embedding.weight") in states["frozen_param_shapes"]


def test_deepspeed_zero3_world1_partitions_and_saves_empty_module(cpu_dist, config, dataset, tmp_path):
    ds_config = deepspeed_config(3, gather_16bit_weights_on_model_save=True)
    plain = apply_stage(build_model(config, seed=0), "finetune")
    model = build_zero3_model(lambda: apply_stage(build_model(config, seed=0), "finetune"), ds_config)
    params = list(model.parameters())
    assert all(p.numel() == 0 and p.ds_numel > 0 for p in params)
    summary, plain_summary = trainable_summary(model), trainable_summary(plain)
    assert {k: (c.trainable, c.total) for k, c in summary.items()} == {k: (c.trainable, c.total) for k, c in plain_summary.items()}
    reference = train(plain, dataset, small(1, learning_rate=0.0))  # same weights, same first batch
    engine, result = train_deepspeed(model, dataset, small(2), ds_config=ds_config)
    assert result.losses[0] == pytest.approx(reference.losses[0], abs=1e-4)
    engine.save_checkpoint(str(tmp_path / "ckpt"))
    engine.save_16bit_model(str(tmp_path / "hf16"))
    states = torch.load(tmp_path / "ckpt" / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=True)
    assert states["module"] and all(t.shape == (0,) for t in states["module"].values())
    assert states["param_shapes"][0]["model.mm_projector.0.weight"] == (64, 64)
    full = torch.load(tmp_path / "hf16" / "pytorch_model.bin", weights_only=True)
    assert full["model.embed_tokens.weight"].shape == (config.vocab_size, 64)
    assert full[CORE_TOWER + running_tower_key("embeddings.patch_embedding.weight")].shape == (64, 3, 8, 8)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_deepspeed_zero3_world2_torchrun(tmp_path):
    from _torchrun import run_torchrun

    returncode, _, stderr = run_torchrun(
        ["-m", "llava_doctor.core.ds_train", "--stage", "3", "--out", str(tmp_path), "--steps", "2"])
    assert returncode == 0, stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    assert reports[0]["losses"] == reports[1]["losses"] and len(reports[0]["losses"]) == 2  # all-reduced mean
    assert all(r["local_numel"] == 0 and r["full_numel"] > 0 for r in reports)
    step_dir = tmp_path / "checkpoint" / "global_step2"
    assert sorted(p.name for p in step_dir.glob("zero_pp_rank_*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ]
