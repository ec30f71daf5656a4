"""Real DeepSpeed ZeRO-2/3 checkpoints written by the engine on CPU, read back by open_checkpoint."""
from __future__ import annotations

import os
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from llava_doctor.artifacts.readers import open_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


class TinyMultimodal(torch.nn.Module):
    """A frozen CLIP tower + a Linear projector + a tiny Llama, with a persistent buffer."""

    def __init__(self):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

        self.vision_tower = CLIPVisionModel(
            CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
        )
        self.mm_projector = torch.nn.Linear(32, 32)
        self.language_model = LlamaForCausalLM(
            LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        )
        self.register_buffer("img_scale", torch.ones(1))
        self.vision_tower.requires_grad_(False)

    def forward(self, pixel_values, input_ids):
        with torch.no_grad():
            features = self.vision_tower(pixel_values).last_hidden_state
        image = self.mm_projector(features) * self.img_scale
        text = self.language_model.get_input_embeddings()(input_ids)
        logits = self.language_model(inputs_embeds=torch.cat([image, text], dim=1)).logits
        return logits.float().pow(2).mean()


def _train_and_save(out, stage: int, *, save_16bit: bool = False) -> TinyMultimodal:
    import deepspeed

    torch.manual_seed(0)
    model = TinyMultimodal()
    trainable = [p for p in model.parameters() if p.requires_grad]
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": save_16bit},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-3), config=config)
    for _ in range(2):
        loss = engine(torch.randn(1, 3, 16, 16), torch.randint(0, 64, (1, 4)))
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(str(out))
    if save_16bit:
        engine.save_16bit_model(str(out))
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cpu_dist):
    root = tmp_path_factory.mktemp("ds")
    _train_and_save(root / "zero2", 2)
    model = _train_and_save(root / "zero3", 3)
    names = {n: tuple(p.ds_shape) for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    _train_and_save(root / "zero3_16bit", 3, save_16bit=True)
    return root, names, frozen


def test_zero3_run_dir(runs):
    root, shapes, frozen = runs
    ckpt = open_checkpoint(root / "zero3")
    info = ckpt.deepspeed
    assert ckpt.format == "deepspeed" and info is not None
    assert (info.stage, info.tag, info.world_size) == (3, "global_step2", 1)
    assert info.model_state_files == ["global_step2/zero_pp_rank_0_mp_rank_00_model_states.pt"]
    assert set(info.frozen_param_shapes) == frozen and frozen
    assert set(info.param_shapes) == set(shapes) - frozen
    assert {**info.param_shapes, **info.frozen_param_shapes} == shapes
    assert info.buffer_names == ["img_scale"]
    assert info.ds_config["zero_optimization"]["stage"] == 3 and info.ds_version
    assert info.consolidated == []
    # the module entries: every parameter is torch.Size([0]) under stage 3; the buffer keeps its shape
    params = {k: t for k, t in ckpt.tensors.items() if k in shapes}
    assert len(params) == len(shapes) and all(t.shape == (0,) for t in params.values())
    assert ckpt.tensors["img_scale"].shape == (1,)
    kinds = {f.path: f.kind for f in ckpt.files}
    assert kinds["global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt"] == "deepspeed-optim-states"
    assert not ckpt.unsafe and not ckpt.integrity


def test_zero3_tag_dir_directly(runs):
    root, shapes, frozen = runs
    ckpt = open_checkpoint(root / "zero3" / "global_step2")
    assert ckpt.deepspeed.stage == 3 and ckpt.deepspeed.tag == "global_step2"
    assert set(ckpt.deepspeed.frozen_param_shapes) == frozen


def test_zero2_full_module(runs):
    root, shapes, frozen = runs
    ckpt = open_checkpoint(root / "zero2")
    info = ckpt.deepspeed
    assert info.stage == 2
    assert info.model_state_files == ["global_step2/mp_rank_00_model_states.pt"]
    assert set(info.frozen_param_shapes) == frozen
    assert {k: t.shape for k, t in ckpt.tensors.items() if k in shapes} == shapes
    info0 = ckpt.tensors["mm_projector.weight"]
    assert ckpt.load_tensor(info0).shape == (32, 32)


def test_zero3_consolidated_16bit_save(runs):
    root, shapes, frozen = runs
    ckpt = open_checkpoint(root / "zero3_16bit")
    assert ckpt.deepspeed.stage == 3
    assert ckpt.deepspeed.consolidated == ["pytorch_model.bin"]
    assert {k: t.shape for k, t in ckpt.tensors.items() if k in shapes} == shapes


def test_hf_trainer_checkpoint_dir_and_latest_pointing_nowhere(runs, tmp_path):
    root, shapes, frozen = runs
    trainer_dir = tmp_path / "checkpoint-2"
    shutil.copytree(root / "zero3" / "global_step2", trainer_dir / "global_step2")
    ckpt = open_checkpoint(trainer_dir)
    assert ckpt.deepspeed.tag == "global_step2" and set(ckpt.deepspeed.frozen_param_shapes) == frozen
    (trainer_dir / "latest").write_text("global_step9")
    ckpt = open_checkpoint(trainer_dir)
    assert [p.kind for p in ckpt.integrity] == ["missing-shard"]
    assert "global_step9" in ckpt.integrity[0].detail and ckpt.deepspeed.tag == "global_step2"


def test_optimizer_states_are_never_opened(runs, monkeypatch):
    root, _, _ = runs
    import llava_doctor.artifacts.torch_format as torch_format

    opened = []
    real = torch_format.load_checked
    monkeypatch.setattr(torch_format, "load_checked", lambda path, **kw: opened.append(os.path.basename(path)) or real(path, **kw))
    import llava_doctor.artifacts.deepspeed_format as ds_format

    monkeypatch.setattr(ds_format, "load_checked", torch_format.load_checked)
    open_checkpoint(root / "zero2")
    assert opened and not any("optim_states" in name for name in opened)


def test_xtuner_iter_pth_directory(runs, tmp_path):
    """XTuner's DeepSpeed strategy saves `iter_N.pth/` as a folder of model/optim states."""
    root, shapes, frozen = runs
    target = tmp_path / "iter_2.pth"
    shutil.copytree(root / "zero2" / "global_step2", target)
    ckpt = open_checkpoint(target)
    assert ckpt.format == "deepspeed" and ckpt.deepspeed.stage == 2 and ckpt.deepspeed.tag == "iter_2.pth"
    assert {k: t.shape for k, t in ckpt.tensors.items() if k in shapes} == shapes
