"""Live inspection of real DeepSpeed ZeRO-3 models on CPU: world size 1 in-process, world size 2 under torchrun.

`stage3_param_persistence_threshold: 0` (core.train.deepspeed_config) keeps even these tiny parameters partitioned,
as a 7B model's are. Run as a script (`python tests/test_live_zero3.py OUT`) it is the torchrun worker.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

TOWER = dict(hidden_size=96, patch_size=4)  # patch_embedding [96, 3, 4, 4]: the shape of the classic message


def tiny(tower_root, pretrain_steps: int = 0, **config):
    """The core's tiny config on a base tower; pretrain_steps > 0 moves the tower off its init (norms, biases)."""
    from llava_doctor.core.configs import prepare_vision_tower, tiny_config

    tower = prepare_vision_tower(tower_root, "clip", pretrain_steps=pretrain_steps, **TOWER)
    return tiny_config(vision_tower=tower, hidden_size=32, **config)


def zero3(config, stage: str = "finetune"):
    from llava_doctor.core.model import build_model
    from llava_doctor.core.stages import apply_stage
    from llava_doctor.core.train import build_zero3_model, deepspeed_config

    return build_zero3_model(lambda: apply_stage(build_model(config), stage), deepspeed_config(3))


def close(got, expected):
    """count, min, max exact; mean and std to fp32 accumulation (partitions add in another order)."""
    count, mean, std, low, high = expected
    return (got[0] == count and got[3:] == [low, high] and got[1] == pytest.approx(mean, rel=1e-5, abs=1e-6)
            and got[2] == pytest.approx(std, rel=1e-4, abs=1e-7))


def stats_table(report_or_live):
    from llava_doctor.artifacts.live import inspect_model
    from llava_doctor.artifacts.live_stats import ValueStats

    live = inspect_model(report_or_live)
    return {p.name: [s.count, s.mean, s.std, s.min, s.max] for p, s in zip(live.parameters, live.values())
            if isinstance(s, ValueStats)}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny(tmp_path_factory.mktemp("towers"))


def test_zero3_world1_statistics_equal_the_plain_model_and_nothing_is_gathered(cpu_dist, config):
    import llava_doctor
    from llava_doctor.core.model import build_model
    from llava_doctor.core.stages import apply_stage

    from test_live_model import assert_unchanged, snapshot

    model = zero3(config)
    plain = apply_stage(build_model(config), "finetune")
    assert all(p.numel() == 0 and p.ds_numel > 0 for p in model.parameters())
    expected, got = stats_table(plain), stats_table(model)
    assert expected.keys() == got.keys()
    for name, row in expected.items():
        assert close(got[name], row), (name, got[name], row)
    before = snapshot(model)
    report = llava_doctor.inspect(model, tokenizer=list(range(10)))
    assert_unchanged(before, snapshot(model))
    assert all(p.numel() == 0 and str(p.ds_status).endswith("NOT_AVAILABLE") for p in model.parameters())
    live = report.stats["live"]
    assert live["zero_stage"] == 3 and all(row["partitioned"] == row["tensors"] for row in live["components"])
    table = {row["component"]: (row["trainable"], row["total"]) for row in live["components"]}
    plain_table = {row["component"]: (row["trainable"], row["total"])
                   for row in llava_doctor.inspect(plain).stats["live"]["components"]}
    assert table == plain_table and table["language_model"][0] > 0  # ds_numel, not numel() == 0
    assert "LD201" not in report.codes()  # placeholders are not findings
    rows = model.get_model().embed_tokens.weight.ds_shape[0]
    model.config.vocab_size = rows - 8  # the config no longer describes the partitioned embedding
    found = [f.message for f in llava_doctor.inspect(model, select=["LD203"]).findings]
    assert any(m.startswith(f"model.embed_tokens.weight: shape [{rows}, 32] (true shape under ZeRO-3), embedding has {rows} rows")
               for m in found)
    model.config.vocab_size = rows
    weight = model.get_model().mm_projector[0].weight
    weight.data = torch.zeros(weight.ds_shape)  # written around ZeRO-3: the next gather will overwrite it
    found = [f.message for f in llava_doctor.inspect(model, select=["LD201"]).findings]
    assert found == ["projector: 1 ZeRO-3 partitioned parameters hold 3,072 local elements while not gathered (e.g. "
                     "model.mm_projector.0.weight, true shape [32, 96]); expected [0] placeholders: the data was written "
                     "around ZeRO-3 (p.data = ...) and the next gather replaces it with the partition"]


def test_tower_loaded_into_a_zero3_model_without_gathered_parameters(cpu_dist, tmp_path):
    """A tower built under ZeRO-3 (transformers' _from_config partitions and initialises it), then loaded with a plain
    load_state_dict: `the shape in current model is torch.Size([0])`. Nothing is copied, the tower keeps its fresh
    init, and LD304 says it is not the base; the twin loads inside GatheredParameters and is clean."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    import llava_doctor
    from llava_doctor.core.builder import transformers_major
    from llava_doctor.core.savers import running_tower_key
    from llava_doctor.core.train import deepspeed_config
    from llava_doctor.core.vision import load_weights, read_vision_config

    from test_live_model import snapshot

    config = tiny(tmp_path, pretrain_steps=1, delay_load=True)
    model = zero3(config)
    folder = Path(config.mm_vision_tower)
    keep = HfDeepSpeedConfig(deepspeed_config(3))  # what the HF Trainer sets up under a ZeRO-3 config
    try:
        tower = CLIPVisionModel._from_config(read_vision_config(folder))
    finally:
        del keep
        unset_hf_deepspeed_config()
    tower.requires_grad_(False)
    fresh = snapshot(tower)
    base = load_file(str(folder / "model.safetensors"))
    with pytest.raises(RuntimeError) as error:
        tower.load_state_dict(base)
    key = running_tower_key("embeddings.patch_embedding.weight")  # as this transformers' CLIP names it
    assert (f"size mismatch for {key}: copying a param with shape torch.Size([96, 3, 4, 4]) "
            "from checkpoint, the shape in current model is torch.Size([0])") in str(error.value)
    left = snapshot(tower)
    assert all(torch.equal(left[k][0], fresh[k][0]) for k in left) and all(p.numel() == 0 for p in tower.parameters())
    wrapper = model.get_vision_tower()
    wrapper.vision_tower, wrapper.is_loaded = tower, True  # a custom load_model that went on after the error
    report = llava_doctor.inspect(model, select=["LD304", "LD201"])
    assert report.codes() == ["LD304"]
    assert "of 39 tensors differ from the base tower" in report.findings[0].message
    if transformers_major() >= 5:  # 4.37's _from_config under ZeRO-3 leaves most weights at PyTorch's module
        # defaults (position_embedding std 1, Linear uniform), not at its class's init
        assert "its values are a fresh initialisation of its class" in report.findings[0].message
    load_weights(tower, base)  # GatheredParameters(modifier_rank=0), as the core's load_model does
    assert llava_doctor.inspect(model, select=["LD304", "LD201"]).findings == []


def test_engine_optimizer_groups_and_gradient_partitions(cpu_dist, config):
    import deepspeed

    import llava_doctor
    from llava_doctor.core.train import deepspeed_config

    model = zero3(config)
    model.get_model().mm_projector.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config={**deepspeed_config(3), "train_micro_batch_size_per_gpu": 1})
    model.get_model().mm_projector.requires_grad_(True)  # unfrozen after the optimizer was built
    report = llava_doctor.inspect(engine, select=["LD303"])
    assert report.stats["live"]["optimizer"]["source"] == "fp16_groups"
    assert [f.message.split(" (")[0] for f in report.findings] == [
        "projector: 4 trainable tensor(s) are not in the optimizer's param groups"]
    model.get_model().mm_projector.requires_grad_(False)
    with torch.no_grad(), deepspeed.zero.GatheredParameters([model.get_model().embed_tokens.weight], modifier_rank=0):
        model.get_model().embed_tokens.weight[5, 0] = float("inf")
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    found = [f.message for f in llava_doctor.inspect(engine, select=["LD204"]).findings]
    assert any(m.startswith("model.embed_tokens.weight: 1 Inf of") for m in found)
    assert any(m.startswith("language_model: the gradients of 20 of 20 tensors hold non-finite values") for m in found)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_zero3_world2_each_rank_reduces_its_partition(tmp_path, config):
    """Two ranks: the statistics combined from two partitions equal the whole model's; both ranks report the same."""
    from llava_doctor.core.model import build_model
    from llava_doctor.core.stages import apply_stage

    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    from _torchrun import run_torchrun

    returncode, _, stderr = run_torchrun([__file__, str(tmp_path), str(Path(config.mm_vision_tower).parent)], env=env)
    assert returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["findings"] == ranks[1]["findings"] and ranks[0]["stats"] == ranks[1]["stats"]
    assert all(r["world_size"] == 2 and r["local_numel"] == 0 and r["unchanged"] for r in ranks)
    assert any(0 < n < full for n, full in ranks[0]["partition_sizes"])  # each rank really held a part
    expected = stats_table(apply_stage(build_model(config), "finetune"))
    for name, row in expected.items():
        assert close(ranks[0]["stats"][name], row), (name, ranks[0]["stats"][name], row)
    assert [c for c, _ in ranks[0]["findings"]] == ["LD305"]  # the core's fresh projector at finetune, on both ranks


def _worker(out: Path, tower_root: str) -> None:
    import torch.distributed as dist

    import llava_doctor
    from llava_doctor.core.distributed import init_cpu_distributed

    from test_live_model import assert_unchanged, snapshot

    torch.set_num_threads(1)
    init_cpu_distributed()
    model = zero3(tiny(tower_root))
    before = snapshot(model)
    report = llava_doctor.inspect(model)
    try:
        assert_unchanged(before, snapshot(model))
        unchanged = True
    except AssertionError:
        unchanged = False
    result = {
        "rank": dist.get_rank(), "world_size": dist.get_world_size(), "stats": stats_table(model), "unchanged": unchanged,
        "findings": [[f.code, f.message] for f in report.findings],
        "local_numel": sum(p.numel() for p in model.parameters()),
        "partition_sizes": [[p.ds_tensor.numel(), p.ds_numel] for p in model.parameters()],
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
