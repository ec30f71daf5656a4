"""LD201: zero-size parameters (ZeRO-3 partitioned tensors saved without gathering)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.checkpoint import CheckpointFile, DeepSpeedInfo
from llava_doctor.findings import Finding, Severity, example_names
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint, clip_tower, hf_llava, hf_llava_config
from ._live_examples import emptied, live
from ._live_examples import hf_llava as live_hf_llava

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


def _dropped_by_save_pretrained():
    """transformers 4.x save_pretrained under ZeRO-3: every [0] placeholder looks like one shared tensor, one survives."""
    return checkpoint({"vision_tower.vision_model.embeddings.class_embedding": (0,)}, config=hf_llava_config(), dtype="F32")


def _trainer_output(*, resumable: bool):
    """An HF Trainer folder under ZeRO-3 with the gather flag off: DeepSpeed state, config.json, no weights."""
    def build():
        ckpt = _deepspeed(stage=3, consolidated=False)()
        ckpt.config = hf_llava_config()
        ckpt.deepspeed.resumable = resumable
        ckpt.deepspeed.ds_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
        ckpt.name = "out/checkpoint-500" if resumable else "out"
        return ckpt

    return build


def _bnb_4bit():
    shapes = hf_llava()
    shapes["language_model.model.layers.0.mlp.up_proj.weight"] = (4096, 1)  # packed 4-bit, not zero-size
    return checkpoint(shapes, config=hf_llava_config())


class ZeroSizeParameters(Check):
    code = "LD201"
    title = "zero-size parameters"
    artifact = ("Checkpoint", "LiveModel")
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
        Example("live: a model with full parameters", live(live_hf_llava)),
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
        Example("the folder trainer.save_model() wrote under ZeRO-3 without the gather flag", _trainer_output(resumable=False),
                count=1, contains=("out: the folder save_model() wrote holds no loadable weights", "OSError",
                                   "python out/zero_to_fp32.py out out --safe_serialization")),
        Example("a resumable checkpoint-N without consolidated weights (a warning)", _trainer_output(resumable=True),
                count=1, contains=("resumable", "python out/checkpoint-500/zero_to_fp32.py out/checkpoint-500")),
        Example("transformers 4.x save_pretrained dropped the other placeholders", _dropped_by_save_pretrained,
                count=4, contains=("vision_tower: 1 of 39 tensors the config describes is in the file, with shape [0]",
                                   "the other 38 are not in the file at all", "projector: none of the 4 tensors",
                                   "Removed shared tensor")),
        Example("live: projector parameters replaced by [0] tensors", live(lambda: emptied(live_hf_llava(), "multi_modal_projector")),
                count=1, contains=("projector: 4 of 4 parameters have shape [0] and no ZeRO-3 partition",
                                   "multi_modal_projector.linear_1.weight")),  # 5.x prefixes `model.`
    )

    def run_checkpoint(self, artifact, context: Context) -> Iterable[Finding]:
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
        schema = self._against_schema(artifact, context) if groups and not ds else {}
        for component, infos in sorted(groups.items()):
            total, missing = schema.get(component, (0, []))
            if missing:
                yield self._dropped(artifact, component, infos, total, missing)
            else:
                yield self._group(artifact, component, infos, totals.get(component, len(infos)), expected_shapes)
        for component, (total, missing) in sorted(schema.items()):
            if component not in groups and missing and len(missing) == total:
                yield self._none_saved(artifact, component, total, missing)

    def _against_schema(self, artifact, context: Context) -> dict:
        """Component -> (tensors the config describes, those not in the file) when the config builds a schema."""
        from llava_doctor.schema import cached_schema, missing_from_schema

        if not artifact.config or not context.option("schema", True):
            return {}
        return missing_from_schema(artifact, cached_schema(artifact))

    def _dropped(self, artifact, component: str, infos: list, total: int, missing: list) -> Finding:
        shown = example_names(infos, EXAMPLES_SHOWN)
        verb = "is" if len(infos) == 1 else "are"
        return self.finding(
            f"{component}: {len(infos)} of {total} tensors the config describes {verb} in the file, with shape [0] "
            f"(e.g. {shown}), and the other {len(missing)} are not in the file at all (e.g. {missing[0]}): "
            f"{_DROPPED}; expected full shapes",
            artifact=artifact.name, location=f"{infos[0].file}:{infos[0].name}",
            observed=f"{len(infos)} [0], {len(missing)} missing", expected=f"{total} full tensors",
            component=component, tensors=[i.name for i in infos], missing=missing,
        )

    def _none_saved(self, artifact, component: str, total: int, missing: list) -> Finding:
        return self.finding(
            f"{component}: none of the {total} tensors the config describes is in the file (e.g. {missing[0]}), while "
            f"other components hold ZeRO-3 placeholders of shape [0]: {_DROPPED}; expected full shapes",
            artifact=artifact.name, location=component, observed="0 saved", expected=f"{total} full tensors",
            component=component, missing=missing,
        )

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
        folder = artifact.name.rstrip("/") or "."
        if optimizer_files and artifact.config is not None and not ds.resumable:
            # the folder trainer.save_model() wrote: users from_pretrained it, and it holds no weights
            return self.finding(
                f"{folder}: the folder save_model() wrote holds no loadable weights: ZeRO-3{_gather_flag(ds)} saved only "
                f"DeepSpeed state ({params} parameters are [0] placeholders in {where}), so from_pretrained({folder!r}) "
                f"fails with `OSError: Error no file named model.safetensors, or pytorch_model.bin`; expected "
                f"model.safetensors: rebuild it with `python {folder}/zero_to_fp32.py {folder} {folder} --safe_serialization`",
                artifact=artifact.name, location=where, severity=Severity.ERROR,
                observed="DeepSpeed state only", expected="model.safetensors beside config.json",
            )
        if optimizer_files:
            # recoverable: zero_to_fp32 rebuilds full weights from the optimizer partitions
            resumable = " (resumable: training can continue from it)" if ds.resumable else ""
            return self.finding(
                f"{ds.tag}: ZeRO-3 checkpoint{resumable} with no consolidated weights beside it ({params} parameters are [0] "
                f"placeholders in {where}); expected full weights: rebuild them with "
                f"`python {folder}/zero_to_fp32.py {folder} {folder}-fp32 --safe_serialization`",
                artifact=artifact.name, location=where, severity=Severity.WARNING,
                observed="no consolidated weights", expected="save_16bit_model or zero_to_fp32 output",
            )
        return self.finding(
            f"{ds.tag}: ZeRO-3 checkpoint with no consolidated weights and no optimizer-state files "
            f"({params} parameters are [0] placeholders in {where}); expected full weights: nothing here can rebuild them",
            artifact=artifact.name, location=where, severity=Severity.ERROR,
            observed="no usable weights", expected="consolidated weights or *optim_states.pt",
        )

    def run_live_model(self, artifact, context: Context) -> Iterable[Finding]:
        """Live: a ZeRO-3 placeholder (`ds_numel` > 0, data [0]) is normal; a parameter with no elements and no
        ZeRO-3 partition behind it has lost its weights, and a partitioned one holding data while ZeRO-3 says it
        is not gathered was written around ZeRO-3 (the next gather discards it)."""
        empty: dict[str, list] = {}
        bypassed: dict[str, list] = {}
        totals: dict[str, int] = {}
        for param in artifact.parameters:
            totals[param.component] = totals.get(param.component, 0) + 1
            if not param.partitioned and param.numel == 0:
                empty.setdefault(param.component, []).append(param)
            elif param.partitioned and param.zero_status == "NOT_AVAILABLE" and param.local_numel:
                bypassed.setdefault(param.component, []).append(param)
        for component, params in sorted(empty.items()):
            yield self.finding(
                f"{component}: {len(params)} of {totals[component]} parameters have shape "
                f"{' / '.join(sorted({str(list(p.shape)) for p in params}))} and no ZeRO-3 partition behind them "
                f"(e.g. {example_names(params, EXAMPLES_SHOWN)}); expected full shapes: their weights were never materialised "
                f"(a ZeRO-3 state dict or module taken without GatheredParameters)",
                artifact=artifact.name, location=params[0].name, observed=[list(p.shape) for p in params[:EXAMPLES_SHOWN]],
                expected="non-empty", component=component, tensors=[p.name for p in params],
            )
        for component, params in sorted(bypassed.items()):
            yield self.finding(
                f"{component}: {len(params)} ZeRO-3 partitioned parameters hold {params[0].local_numel:,} local elements "
                f"while not gathered "
                f"(e.g. {example_names(params, EXAMPLES_SHOWN)}, true shape {list(params[0].shape)}); expected [0] placeholders: the data was "
                f"written around ZeRO-3 (p.data = ...) and the next gather replaces it with the partition",
                artifact=artifact.name, location=params[0].name, severity=Severity.ERROR,
                observed="local data while NOT_AVAILABLE", expected="[0] placeholder", component=component,
                tensors=[p.name for p in params],
            )


_DROPPED = ("ZeRO-3 placeholders saved without gathering, and transformers < 5 save_pretrained drops all but one of "
            "them as shared tensors ('Removed shared tensor ... while saving')")


def _gather_flag(ds: DeepSpeedInfo) -> str:
    zero = (ds.ds_config or {}).get("zero_optimization") or {}
    for name in ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save"):
        if name in zero:
            return f" with {name} {str(zero[name]).lower()}"
    return " without stage3_gather_16bit_weights_on_model_save"
