"""LD901: the launch's DeepSpeed config - what DeepSpeed rejects, and what ZeRO-3 will do to the run's loads and saves."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.launch import Launch
from llava_doctor.findings import Finding, Severity
from llava_doctor.preflight import deepspeed_config as ds
from llava_doctor.preflight.models import (CUSTOM_LOADERS, adapter_state, is_llava_checkpoint, llm_hidden_size,
                                           tower_class)
from llava_doctor.registry import Check, Context, Example

from ._launch_examples import FINETUNE, LLAVA_V15_13B, PRETRAIN, ZERO2, ZERO3, launch, projector_file

ZERO3_NO_GATHER = {**ZERO3, "zero_optimization": {k: v for k, v in ZERO3["zero_optimization"].items()
                                                  if k != "stage3_gather_16bit_weights_on_model_save"}}
OFFLOAD_NO_OPTIMIZER = {**ZERO2, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"},
                                                       "offload_param": {"device": "cpu"}}}
TRAINER_WARNING = ("stage3_gather_16bit_weights_on_model_save=false. Saving the full checkpoint instead, use "
                   "zero_to_fp32.py to recover weights")
OFFLOAD_ERROR = ("ZeRORuntimeException: You are using ZeRO-Offload with a client provided optimizer (...) which in "
                 "most cases will yield poor performance")


def saves_only_projector(launch_: Launch) -> bool:
    """LLaVA's safe_save_model_for_hf_trainer writes only mm_projector.bin (gathered itself) for adapter-only runs."""
    if launch_.arg("tune_mm_mlp_adapter", False):
        return True
    parts = [p for p in str(launch_.arg("mm_tunable_parts", "")).split(",") if p]
    return launch_.codebase == "llava-next" and len(parts) == 1 and parts[0] in ("mm_mlp_adapter", "mm_vision_resampler")


class DeepSpeedConfigCheck(Check):
    code = "LD901"
    title = "DeepSpeed config that DeepSpeed rejects or that ZeRO-3 turns into unloadable saves"
    artifact = "Launch"
    severity = Severity.ERROR
    rationale = """
    The `--deepspeed` JSON is read twice: by transformers' HfTrainerDeepSpeedConfig, which replaces
    "auto" on a fixed set of keys with TrainingArguments values and raises `ValueError: Please correct
    the following DeepSpeed config values that mismatch TrainingArguments values` when an explicit value
    disagrees (`bf16.enabled: true` with `--fp16 True`), then by `deepspeed.initialize`, whose pydantic
    models forbid unknown keys (`Extra inputs are not permitted`) and typed values ("auto" left on a
    key the integration does not fill). Offloading the optimizer (`offload_optimizer.device: cpu`)
    with no `optimizer` section makes the HF Trainer hand DeepSpeed its own torch AdamW, and DeepSpeed
    stops with `ZeRORuntimeException: You are using ZeRO-Offload with a client provided optimizer`;
    `offload_param` outside stage 3 is ignored. Under ZeRO-3 two traps wait further in: without
    `stage3_gather_16bit_weights_on_model_save: true` (DeepSpeed's default is false) `trainer.save_model`
    logs `stage3_gather_16bit_weights_on_model_save=false. Saving the full checkpoint instead, use
    zero_to_fp32.py to recover weights` and the output folder holds a config and a DeepSpeed
    `global_step*` folder but no loadable weights (LLaVA's adapter-only saves gather by themselves); and
    when `--model_name_or_path` is already a LLaVA checkpoint its projector (and tower) are built inside
    `from_pretrained`, so ZeRO-3 has partitioned them when `initialize_vision_modules` loads
    `--pretrain_mm_mlp_adapter` with a plain `load_state_dict`: `size mismatch for 0.weight: copying a
    param with shape torch.Size([4096, 1024]) from checkpoint, the shape in current model is
    torch.Size([0])` (haotian-liu/LLaVA#1619, #665, #1878; LLaVA-VL/LLaVA-NeXT#177); a tower whose
    `load_model()` copies weights itself (OpenCLIP, ImageBind, a custom class) fails the same way.
    """
    fix = """
    Fix the key DeepSpeed names; keep "auto" only on the keys the HF integration fills; add an
    `optimizer` section (or `"zero_force_ds_cpu_optimizer": false`) when offloading the optimizer; under
    ZeRO-3 set `"stage3_gather_16bit_weights_on_model_save": true`; and load weights into a partitioned
    module under `deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0)` - or
    train that stage with ZeRO-2 (scripts/zero2.json).
    """
    valid = (
        Example("LLaVA v1.5 finetune with zero3.json", launch(FINETUNE, deepspeed=ZERO3,
                                                             adapter=projector_file(5120, 1024))),
        Example("pretrain with zero2.json", launch(PRETRAIN, deepspeed=ZERO2)),
        Example("pretrain under ZeRO-3 without the gather flag (LLaVA gathers the projector itself)",
                launch({**PRETRAIN, "deepspeed": "zero3.json"}, deepspeed=ZERO3_NO_GATHER)),
    )
    invalid = (
        Example("ZeRO-3 full fine-tune without the gather flag", launch(FINETUNE, deepspeed=ZERO3_NO_GATHER,
                                                                        adapter=projector_file(5120, 1024)),
                count=1, contains=("stage3_gather_16bit_weights_on_model_save", "zero_to_fp32.py")),
        Example("a key DeepSpeed does not know", launch(FINETUNE, deepspeed={**ZERO3, "zero_optimization": {
            **ZERO3["zero_optimization"], "stage3_gather_fp16_weights": True}}, adapter=projector_file(5120, 1024)),
                count=1, contains=("stage3_gather_fp16_weights", "Extra inputs are not permitted")),
        Example("explicit bf16 against --fp16", launch({**FINETUNE, "bf16": False, "fp16": True},
                                                       deepspeed={**ZERO3, "bf16": {"enabled": True}},
                                                       adapter=projector_file(5120, 1024)),
                count=1, contains=("ds bf16.enabled=True vs hf bf16|bf16_full_eval=False",)),
        Example("optimizer offload without an optimizer section", launch(PRETRAIN, deepspeed=OFFLOAD_NO_OPTIMIZER),
                count=2, contains=("ZeRO-Offload with a client provided optimizer", "offload_param")),
        Example("a projector adapter into a LLaVA checkpoint under ZeRO-3",
                launch({**FINETUNE, "model_name_or_path": "liuhaotian/llava-v1.5-13b"}, model=LLAVA_V15_13B,
                       deepspeed=ZERO3, adapter=projector_file(5120, 1024)),
                count=1, contains=("torch.Size([0])", "GatheredParameters")),
        Example("not JSON", launch(FINETUNE, deepspeed_problem="./scripts/zero3.json: not valid JSON (Expecting "
                                                               "',' delimiter: line 3 column 5 (char 20))"),
                count=1, contains=("not valid JSON",)),
    )

    def run_launch(self, artifact: Launch, context: Context) -> Iterable[Finding]:
        file = artifact.deepspeed
        if file is None:
            return
        where = artifact.where("deepspeed")
        name = f"--deepspeed {file.value}"
        if file.problem or file.config is None:
            yield self.finding(f"{name}: {file.problem}; expected a readable DeepSpeed JSON config",
                               artifact=artifact.name, location=where, observed=file.problem,
                               expected="a JSON object", phase="launch")
            return
        config = file.config
        model = artifact.model
        hidden = llm_hidden_size(model.config) if model else None
        keys = ds.hf_auto_keys()
        filled, mismatches, left = ds.fill_auto(config, artifact.arguments, hidden, keys)
        for line in mismatches:
            yield self.finding(
                f"{name}: {line}: transformers raises `ValueError: Please correct the following DeepSpeed config "
                "values that mismatch TrainingArguments values`; expected \"auto\" or the launch's value",
                artifact=artifact.name, location=line.split("=", 1)[0].removeprefix("ds "), observed=line,
                expected="matching values", phase="launch")
        yield from self._validation(artifact, name, filled, left, keys)
        yield from self._offload(artifact, name, config)
        if ds.zero_stage(config) == 3:
            yield from self._zero3(artifact, name, config)

    def _validation(self, artifact: Launch, name: str, filled: dict, left: list[str], keys) -> Iterable[Finding]:
        for key in left:
            yield self.finding(
                f"{name}: {key} = \"auto\", which transformers {artifact.transformers_version or ''} does not fill (its "
                f"integration fills {len(keys)} keys such as train_micro_batch_size_per_gpu): DeepSpeed receives the "
                "string - its pydantic sections swap it for their default, a top-level value stays 'auto' and fails "
                "where the engine first computes with it; expected a value", artifact=artifact.name, location=key,
                observed="auto", expected="a value", severity=Severity.WARNING, phase="launch")
        if not ds.deepspeed_available():
            yield self.finding(
                f"{name}: DeepSpeed is not installed here, so the config was not validated against DeepSpeed's own "
                "config model; expected DeepSpeed installed where preflight runs", artifact=artifact.name,
                location=artifact.where("deepspeed"), severity=Severity.INFO, phase="launch",
                fix="Run preflight in the training environment (pip install deepspeed).")
            return
        problem = ds.validate(filled)
        if problem:
            yield self.finding(f"{name}: DeepSpeed rejects the config at deepspeed.initialize: {problem}; expected a "
                               "config DeepSpeed accepts", artifact=artifact.name, location=artifact.where("deepspeed"),
                               observed=problem, expected="a valid DeepSpeed config", phase="launch")

    def _offload(self, artifact: Launch, name: str, config) -> Iterable[Finding]:
        optimizer_device = ds.offload_device(config, "optimizer")
        if optimizer_device and "optimizer" not in config and config.get("zero_force_ds_cpu_optimizer", True):
            yield self.finding(
                f"{name}: zero_optimization.offload_optimizer.device = {optimizer_device} with no \"optimizer\" "
                f"section: the HF Trainer passes its own {artifact.arg('optim', 'adamw_torch')} optimizer and "
                f"deepspeed.initialize raises `{OFFLOAD_ERROR}`; expected an optimizer section DeepSpeed builds "
                "(DeepSpeedCPUAdam)", artifact=artifact.name, location="zero_optimization.offload_optimizer",
                observed=optimizer_device, expected="\"optimizer\": {\"type\": \"AdamW\", ...}", phase="launch")
        param_device = ds.offload_device(config, "param")
        if param_device and ds.zero_stage(config) < 3:
            yield self.finding(
                f"{name}: zero_optimization.offload_param.device = {param_device} under ZeRO stage "
                f"{ds.zero_stage(config)}: only stage 3 offloads parameters, so this is ignored and the parameters stay "
                "in GPU memory; expected stage 3 or no offload_param", artifact=artifact.name,
                location="zero_optimization.offload_param", observed=f"stage {ds.zero_stage(config)}",
                expected="stage 3", severity=Severity.WARNING, phase="launch")

    def _zero3(self, artifact: Launch, name: str, config) -> Iterable[Finding]:
        gather, _key = ds.gather_on_save(config)
        if not gather and not saves_only_projector(artifact):
            lora = bool(artifact.arg("lora_enable", False))
            saving = "the final adapter is gathered by train.py, but every checkpoint-N folder" if lora else \
                "trainer.save_model at the end of training (and every checkpoint-N folder)"
            yield self.finding(
                f"{name}: ZeRO-3 without stage3_gather_16bit_weights_on_model_save (DeepSpeed's default is false): "
                f"{saving} gets no loadable weights - transformers logs `{TRAINER_WARNING}` and writes only a DeepSpeed "
                "global_step folder; expected the gather flag true", artifact=artifact.name,
                location="zero_optimization.stage3_gather_16bit_weights_on_model_save", observed="false (unset)",
                expected=True, severity=Severity.WARNING if lora else Severity.ERROR, phase="save")
        model = artifact.model
        if model is None or not is_llava_checkpoint(model.config):
            return
        adapter = artifact.adapter
        if adapter is not None and adapter.path:
            state = adapter_state(adapter.shapes or {})
            key, shape = next(iter(state.items()), ("0.weight", ()))
            yield self.finding(
                f"{artifact.where('pretrain_mm_mlp_adapter')} {adapter.value} under ZeRO-3 ({name}) into "
                f"--model_name_or_path {model.value}, a LLaVA checkpoint: its mm_projector is built inside "
                "from_pretrained and already partitioned when initialize_vision_modules calls load_state_dict: "
                f"`size mismatch for {key}: copying a param with shape torch.Size({list(shape)}) from checkpoint, the "
                "shape in current model is torch.Size([0])` (haotian-liu/LLaVA#1619); expected the load under "
                "GatheredParameters, or ZeRO-2", artifact=artifact.name, location=artifact.where("pretrain_mm_mlp_adapter"),
                observed="torch.Size([0])", expected=list(shape), phase="launch",
                fix="Load the adapter inside `with deepspeed.zero.GatheredParameters(list(self.mm_projector.parameters()), "
                    "modifier_rank=0):` in initialize_vision_modules (haotian-liu/LLaVA#1878), start from the base LLM "
                    "instead of a LLaVA checkpoint, or train this stage with scripts/zero2.json.")
        tower = artifact.tower
        if tower is not None:
            cls, _family = tower_class(artifact.codebase, tower.value, tower.how == "local path")
            if cls in CUSTOM_LOADERS:
                yield self.finding(
                    f"--vision_tower {tower.value} ({cls}) under ZeRO-3 with a LLaVA checkpoint as --model_name_or_path: "
                    "the tower module is created while from_pretrained partitions the model, and its load_model() "
                    "copies weights with a plain load_state_dict: `... the shape in current model is torch.Size([0])`; "
                    "expected the load under GatheredParameters, or ZeRO-2", artifact=artifact.name,
                    location=artifact.where("vision_tower"), observed=cls, expected="a ZeRO-3-aware load",
                    severity=Severity.WARNING, phase="launch")

