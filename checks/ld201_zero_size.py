"""LD201: zero-size parameters (ZeRO-3 partitioned tensors saved without gathering)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.checkpoint import CheckpointFile, DeepSpeedInfo
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint, clip_tower, hf_llava, hf_llava_config

EXAMPLES_SHOWN = 3


def _zero3_saved(components: tuple[str, ...] = ("vision_tower.", "multi_modal_projector.", "language_model.")):
    def build():
        shapes = {k: ((0,) if k.startswith(components) else v) for k, v in hf_llava().items()}
        return checkpoint(shapes, config=hf_llava_config(), dtype="F32")

    return build


def _complete():
    return checkpoint(hf_llava(), config=hf_llava_config())


def _deepspeed(*, stage: int, consolidated: bool, optimizer_files: bool = True):
    def build():
        full = clip_tower("")
        tensors = {k: (0,) for k in full} if stage == 3 else dict(full)
        tensors["img_scale"] = (1,)
        files = [CheckpointFile("latest", 12, "other"),
                 CheckpointFile("global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt", 9000, "deepspeed-model-states")]
        if optimizer_files:
            files.append(CheckpointFile("global_step3/zero_pp_rank_0_mp_rank_00_optim_states.pt", 90000, "deepspeed-optim-states"))
        if consolidated:
            files.append(CheckpointFile("hf16/pytorch_model.bin", 300000, "torch"))
            tensors = dict(full, img_scale=(1,))
        info = DeepSpeedInfo(
            stage=stage, tag="global_step3", world_size=1,
            model_state_files=["global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt"],
            param_shapes={}, frozen_param_shapes=dict(full), buffer_names=["img_scale"],
            ds_config={"zero_optimization": {"stage": stage}}, ds_version="0.19.8",
            consolidated=["hf16/pytorch_model.bin"] if consolidated else [],
        )
        file = "hf16/pytorch_model.bin" if consolidated else "global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt"
        return checkpoint(tensors, file=file, layout="vision-only", files=tuple(files), deepspeed=info, dtype="F32")

    return build


def _bnb_4bit():
    shapes = hf_llava()
    shapes["language_model.model.layers.0.mlp.up_proj.weight"] = (4096, 1)  # packed 4-bit, not zero-size
    return checkpoint(shapes, config=hf_llava_config())


class ZeroSizeParameters(Check):
    code = "LD201"
    title = "zero-size parameters"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    rationale = """
    Under DeepSpeed ZeRO-3 every parameter of the model object is a placeholder of shape
    torch.Size([0]); the real data is partitioned across ranks. `model.state_dict()`,
    `save_pretrained` or `save_file` called without gathering write those placeholders: the file
    is valid and small, and every loader then fails with `size mismatch for
    model.layers.26.self_attn.k_proj.weight: copying a param with shape torch.Size([0]) from
    checkpoint, the shape in current model is torch.Size([512, 3584])` (strict=False does not
    help), or, with transformers' `ignore_mismatched_sizes=True`, silently returns a randomly
    initialised model. A DeepSpeed checkpoint directory is different: its stage-3
    `*model_states.pt` always holds zero-size `module` entries and the weights live in the
    optimizer partitions, so what matters there is whether consolidated weights exist beside it
    (`save_16bit_model`, or `zero_to_fp32.py` output). The Trainer warns only once: `deepspeed.
    save_16bit_model didn't save the model, since stage3_gather_16bit_weights_on_model_save=false.
    Saving the full checkpoint instead, use zero_to_fp32.py to recover weights`.
    """
    fix = """
    Gather before saving: set `"stage3_gather_16bit_weights_on_model_save": true` in the
    zero_optimization section (then `engine.save_16bit_model(dir)` / the Trainer writes full
    weights), or wrap custom saves in `with deepspeed.zero.GatheredParameters(params):` and save
    inside the block (LLaVA's `maybe_zero_3` does this). To recover an existing run, rebuild full
    weights from the DeepSpeed checkpoint directory with `python zero_to_fp32.py CKPT_DIR OUT_DIR
    --safe_serialization` (the script is saved inside the directory) or
    `deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(CKPT_DIR)`.
    """
    valid = (
        Example("complete checkpoint", _complete),
        Example("bitsandbytes 4-bit packed weight", _bnb_4bit),
        Example("ZeRO-3 dir with consolidated weights", _deepspeed(stage=3, consolidated=True)),
        Example("ZeRO-2 dir (full module shapes)", _deepspeed(stage=2, consolidated=False)),
    )
    invalid = (
        Example("ZeRO-3 state dict saved without gathering", _zero3_saved(), count=4,
                contains=("vision_tower: 39 of 39 tensors have shape [0]", "projector: 4 of 4", "language_model: 20 of 20",
                          "lm_head: 1 of 1",
                          "vision_tower.embeddings.class_embedding")),
        Example("only the projector was not gathered", _zero3_saved(("multi_modal_projector.",)), count=1,
                contains=("projector: 4 of 4 tensors have shape [0]", "multi_modal_projector.linear_1.bias")),
        Example("ZeRO-3 dir without consolidated weights", _deepspeed(stage=3, consolidated=False), count=1,
                contains=("no consolidated weights", "zero_to_fp32.py", "39 parameters")),
        Example("ZeRO-3 dir without consolidated weights or optimizer states",
                _deepspeed(stage=3, consolidated=False, optimizer_files=False), count=1,
                contains=("no optimizer-state files",)),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        ds = artifact.deepspeed
        buffers = set(ds.buffer_names) if ds else set()
        partitioned_module = bool(ds and ds.stage == 3 and not ds.consolidated)
        if partitioned_module:
            yield self._no_consolidated_weights(artifact, ds)
        groups: dict[str, list] = {}
        for info in artifact.iter_tensors():
            if not info.is_empty or info.name in buffers:
                continue
            if partitioned_module and info.file in ds.model_state_files:
                continue  # the stage-3 module is always zero-size; reported once above
            groups.setdefault(info.component, []).append(info)
        totals = {c: len(v) for c, v in artifact.by_component().items()}
        expected_shapes = {**ds.param_shapes, **ds.frozen_param_shapes} if ds else {}
        for component, infos in sorted(groups.items()):
            yield self._group(artifact, component, infos, totals.get(component, len(infos)), expected_shapes)

    def _group(self, artifact, component: str, infos: list, total: int, expected_shapes: dict) -> Finding:
        shapes = sorted({str(list(i.shape)) for i in infos})
        shown = ", ".join(i.name for i in infos[:EXAMPLES_SHOWN]) + (", ..." if len(infos) > EXAMPLES_SHOWN else "")
        known = expected_shapes.get(infos[0].name)
        expected = f"expected {list(known)} for {infos[0].name}" if known else "expected full shapes"
        return self.finding(
            f"{component}: {len(infos)} of {total} tensors have shape {' / '.join(shapes)} (e.g. {shown}); {expected}",
            artifact=artifact.name,
            location=f"{infos[0].file}:{infos[0].name}",
            observed=[list(i.shape) for i in infos[:EXAMPLES_SHOWN]],
            expected=list(known) if known else "non-empty",
            component=component,
            tensors=[i.name for i in infos],
        )

    def _no_consolidated_weights(self, artifact, ds: DeepSpeedInfo) -> Finding:
        optimizer_files = [f.path for f in artifact.files if f.kind == "deepspeed-optim-states"]
        params = len(ds.param_shapes) + len(ds.frozen_param_shapes)
        where = ds.model_state_files[0] if ds.model_state_files else ds.tag
        if optimizer_files:
            # recoverable: zero_to_fp32 rebuilds full weights from the optimizer partitions
            return self.finding(
                f"{ds.tag}: ZeRO-3 checkpoint with no consolidated weights beside it ({params} parameters are [0] "
                f"placeholders in {where}); expected full weights: rebuild them with the zero_to_fp32.py saved in the run directory",
                artifact=artifact.name, location=where, severity=Severity.WARNING,
                observed="no consolidated weights", expected="save_16bit_model or zero_to_fp32 output",
            )
        return self.finding(
            f"{ds.tag}: ZeRO-3 checkpoint with no consolidated weights and no optimizer-state files "
            f"({params} parameters are [0] placeholders in {where}); expected full weights: nothing here can rebuild them",
            artifact=artifact.name, location=where, severity=Severity.ERROR,
            observed="no usable weights", expected="consolidated weights or *optim_states.pt",
        )
