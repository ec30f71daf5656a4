"""lora-tunable-parts: LoRA plus an mm_tunable_parts that lists the LLM trains the whole LLM (LLaVA-NeXT before bfbba5a)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import Scenario
from ._common import quiet, shapes_dataset, tiny_model, tokenizer

SCRIPT = "finetune.sh"
TRAIN_PY = "llava/train/train.py"  # the checkout preflight reads beside llava/train/train_mem.py
LLM, ADAPTER_RUN, DATA = "models/llm", "checkpoints/projectors/tiny-mlp2x_gelu-pretrain", "data"
TUNABLE_PARTS = "mm_vision_tower,mm_mlp_adapter,mm_language_model"
LORA_R, LORA_ALPHA = 8, 16
SAMPLES, ADAPTER_STEPS = 8, 3
FIX_COMMIT = "bfbba5a"
VERSION = "chatml_direct"  # LLaVA-NeXT's ChatML template (preprocess_mpt), fitting the ChatML tokenizer below

# The tunable-parts branch of LLaVA-NeXT's llava/train/train.py, as a function of its (model_args,
# training_args): the lines preflight reads to tell a checkout before the fix from one after it, and the
# code this scenario runs on the real PEFT-wrapped model. The rest of that train.py is not recreated.
_TRAIN_PY = '''"""Stand-in for LLaVA-NeXT's llava/train/train.py ({when} commit {commit}): its mm_tunable_parts branch only."""


def set_tunable_parts(model, model_args, training_args):
    """requires_grad as train.py sets it when --mm_tunable_parts is given (after get_peft_model)."""
    tunable_parts = model_args.mm_tunable_parts.split(",")
    model.requires_grad_(False)
    if "mm_mlp_adapter" in tunable_parts:
        for param in model.get_model().mm_projector.parameters():
            param.requires_grad_(True)
    if "mm_vision_tower" in tunable_parts:
        for name, param in model.named_parameters():
            if "vision_tower" in name:
                param.requires_grad_(True)
{language_model}
'''
_BEFORE_FIX = '''    if "mm_language_model" in tunable_parts:
        for name, param in model.named_parameters():  # every LLM weight, LoRA or not
            if "vision_tower" not in name and "mm_projector" not in name and "vision_resampler" not in name:
                param.requires_grad_(True)'''
_AFTER_FIX = '''    if "mm_language_model" in tunable_parts:
        if not training_args.lora_enable:  # with LoRA the LLM trains through its adapters only
            for name, param in model.named_parameters():
                if "vision_tower" not in name and "mm_projector" not in name and "vision_resampler" not in name:
                    param.requires_grad_(True)
    if training_args.lora_enable:  # the global freeze above froze the adapters too
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)'''

_LAUNCH = f'''#!/bin/bash
# In the shape of LLaVA-VL/LLaVA-NeXT scripts/train/finetune_ov.sh (OneVision stage 2) with LoRA switched
# on, as in LLaVA-VL/LLaVA-NeXT#508; the models and data are the tiny local folders beside this script.
LLM_VERSION="./{LLM}"
VISION_MODEL_VERSION="./{{tower}}"
PROMPT_VERSION="{{version}}"
BASE_RUN_NAME="{ADAPTER_RUN.rsplit('/', 1)[1]}"
RUN_NAME="llava-onevision-tiny-lora-ov_stage"

ACCELERATE_CPU_AFFINITY=1 torchrun --nproc_per_node="${{NUM_GPUS:-8}}" --nnodes="${{NNODES:-1}}" \\
    llava/train/train_mem.py \\
    --lora_enable True --lora_r {LORA_R} --lora_alpha {LORA_ALPHA} \\
    --deepspeed scripts/zero3.json \\
    --model_name_or_path ${{LLM_VERSION}} \\
    --version ${{PROMPT_VERSION}} \\
    --data_path ./{DATA}/data.json \\
    --image_folder ./{DATA}/images \\
    --pretrain_mm_mlp_adapter="./checkpoints/projectors/${{BASE_RUN_NAME}}/mm_projector.bin" \\
    --mm_tunable_parts="{TUNABLE_PARTS}" \\
    --mm_vision_tower_lr=2e-6 \\
    --vision_tower ${{VISION_MODEL_VERSION}} \\
    --mm_projector_type mlp2x_gelu \\
    --mm_vision_select_layer -2 \\
    --mm_use_im_start_end False \\
    --mm_use_im_patch_token False \\
    --group_by_modality_length True \\
    --bf16 True \\
    --run_name $RUN_NAME \\
    --output_dir ./checkpoints/onevision/$RUN_NAME \\
    --num_train_epochs 1 \\
    --per_device_train_batch_size 1 \\
    --gradient_accumulation_steps 2 \\
    --save_strategy "steps" \\
    --save_steps 1000 \\
    --learning_rate 1e-5 \\
    --weight_decay 0. \\
    --warmup_steps 30 \\
    --lr_scheduler_type "cosine" \\
    --logging_steps 1 \\
    --model_max_length 2048 \\
    --gradient_checkpointing True \\
    --lazy_preprocess True \\
    --report_to none
'''
ZERO3 = {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
         "gradient_accumulation_steps": "auto",
         "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                               "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                               "stage3_param_persistence_threshold": "auto",
                               "stage3_gather_16bit_weights_on_model_save": True}}
# LLaVA-NeXT's per-group log line since bfbba5a ("Trainable parameter groups: lora=..., ...")
_GROUPS = ("lora", "mm_projector", "vision_resampler", "vision_tower", "llm_base")


def train_py_source(fixed: bool) -> str:
    return _TRAIN_PY.format(when="after" if fixed else "before", commit=FIX_COMMIT,
                            language_model=_AFTER_FIX if fixed else _BEFORE_FIX)


def _group(name: str) -> str:
    for key in ("lora_", "mm_projector", "vision_resampler", "vision_tower"):
        if key in name:
            return key.rstrip("_")
    return "llm_base"


def trainable_groups(model) -> dict[str, int]:
    """Trainable elements per LLaVA-NeXT log group (lora, mm_projector, vision_resampler, vision_tower, llm_base)."""
    from ..core.stages import parameter_numel

    groups = dict.fromkeys(_GROUPS, 0)
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[_group(name)] += parameter_numel(param)
    return groups


def groups_line(groups: dict[str, int]) -> str:
    return "Trainable parameter groups: " + ", ".join(f"{k}={v:,}" for k, v in groups.items())


def _write_workdir(out: Path, fixed: bool) -> None:
    """The launch's world: base LLM (weights + its tokenizer), tower, stage-1 projector, data, DeepSpeed config,
    the checkout's train.py and the launch script."""
    from ..core import savers
    from ..core.data import build_samples, write_dataset
    from ..core.stages import apply_stage
    from ..core.train import TrainConfig, train
    from .delay_load import write_base_llm
    from .tokenization_mismatch import VOCAB_SIZE, write_chatml_tokenizer

    tok = tokenizer()  # the core's: the stage-1 projector steps run on the core's own data
    model = tiny_model(out, vocab_size=VOCAB_SIZE)
    tower = Path(model.config.mm_vision_tower).relative_to(out)
    write_base_llm(model, tok, out / LLM)
    for written in (out / LLM).iterdir():  # the LLM's own tokenizer replaces the core's
        if written.name not in ("config.json", "model.safetensors"):
            written.unlink()
    write_chatml_tokenizer(out / LLM)  # ChatML specials, byte-level: no <unk> in any text (LLaVA-NeXT pads with it)
    # OneVision stage 2 starts from the stage-1 projector: a few projector-only steps of the same model
    train(apply_stage(model, "pretrain"), shapes_dataset(tok, 8),
          TrainConfig(steps=ADAPTER_STEPS, batch_size=4, warmup_steps=1, logging_steps=ADAPTER_STEPS))
    savers.save_llava_original(model, out / ADAPTER_RUN, stage="pretrain")
    # single-round conversations: from the second round on, LLaVA-NeXT's preprocessing of every template
    # either reads tokenizer attributes transformers 5 removed or counts a BOS this tokenizer does not add
    # (findings preflight reports on their own; this scenario is about LD301 alone)
    write_dataset([s for s in build_samples(8 * SAMPLES) if len(s.conversations) == 2][:SAMPLES], out / DATA)
    (out / "scripts").mkdir()
    savers.write_json(out / "scripts" / "zero3.json", ZERO3)
    (out / TRAIN_PY).parent.mkdir(parents=True, exist_ok=True)
    (out / TRAIN_PY).write_text(train_py_source(fixed))
    (out / SCRIPT).write_text(_LAUNCH.replace("{tower}", tower.as_posix()).replace("{version}", VERSION))


def _one_step(out: Path, fixed: bool) -> dict[str, Any]:
    """What the checkout's train.py leaves trainable on the real model, and one real step under LlavaDoctorCallback."""
    import warnings

    import torch

    from ..artifacts.launch import read_launch
    from ..callback import LlavaDoctorCallback
    from ..core import savers
    from ..core.smoke import build_model, make_batch
    from ..core.stages import component_of_parameter, trainable_summary
    from ..preflight.tokenizer import load_training_tokenizer

    launch = read_launch(str(out / SCRIPT), workdir=out)
    namespace: dict[str, Any] = {}
    exec(compile(train_py_source(fixed), str(out / TRAIN_PY), "exec"), namespace)  # the checkout's own lines
    torch.manual_seed(0)
    model = savers.wrap_lora(build_model(launch, torch.float32), r=LORA_R, alpha=LORA_ALPHA)  # get_peft_model
    args = SimpleNamespace(lora_enable=True, mm_tunable_parts=TUNABLE_PARTS)  # train.py copies it onto training_args
    namespace["set_tunable_parts"](model, args, args)
    model.config.mm_tunable_parts = TUNABLE_PARTS
    groups, summary = trainable_groups(model), trainable_summary(model)
    tok, _note = load_training_tokenizer(launch.model.path, launch.codebase, launch.model.value, 2048)
    tower = model.get_base_model().get_vision_tower()
    batch = make_batch(launch, tok, tower.image_processor, "cpu", torch.float32)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    doctor = LlavaDoctorCallback(pretrained=False, tokenizer=tok, name="train start")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the callback warns per finding; they are recorded below
        doctor.on_train_begin(args, model=model, optimizer=optimizer)
        model.train()
        loss = model(**batch).loss
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
        optimizer.step()
        doctor.observe_step(1, float(loss.detach()), grad_norm, batch={"labels": batch["labels"]})
    moved: dict[str, int] = {}
    for name, param in model.named_parameters():
        component = component_of_parameter(name)
        moved[component] = moved.get(component, 0) + int(not torch.equal(param.detach(), before[name]))
    findings = doctor.report().findings
    return {
        "trainable_parameter_groups": groups_line(groups),
        "trainable_groups": groups,
        "trainable_elements": {c: n.trainable for c, n in sorted(summary.items())},
        "total_elements": {c: n.total for c, n in sorted(summary.items())},
        "tensors_changed_by_one_step": dict(sorted(moved.items())),
        "step_loss": float(loss.detach()),
        "train_start_codes": sorted({f.code for f in findings}),
        "train_start_findings": [f"{f.code} {f.severity.name.lower()}: {f.message}" for f in findings],
    }


def make(out: Path, fixed: bool) -> dict[str, Any]:
    with quiet():
        _write_workdir(out, fixed)
        step = _one_step(out, fixed)
    return {
        "launch": SCRIPT,
        "checkout": TRAIN_PY,
        "lora_fix_in_checkout": fixed,
        "mm_tunable_parts": TUNABLE_PARTS,
        "lora_enable": True,
        **step,
    }


SCENARIO = Scenario(
    name="lora-tunable-parts",
    title="LoRA with mm_tunable_parts listing the LLM: the whole LLM trains (LLaVA-NeXT before bfbba5a)",
    broken=f"""
        finetune.sh is a OneVision stage-2 launch (`--lora_enable True --mm_tunable_parts
        "{TUNABLE_PARTS}"`, `--pretrain_mm_mlp_adapter`, ZeRO-3) over tiny local folders the bundled core
        wrote: {LLM}/ (a Llama LLM with its weights and a ChatML byte-level tokenizer), towers/ (the CLIP
        tower), the stage-1 projector (a few projector-only steps), {DATA}/ (single-round conversations and
        images) and scripts/zero3.json.
        {TRAIN_PY} is the checkout: a stand-in holding LLaVA-NeXT's mm_tunable_parts branch as it was before
        commit {FIX_COMMIT} - model.requires_grad_(False), then the listed parts unfrozen, where
        mm_language_model unfreezes every parameter that is not the tower, the projector or the resampler:
        the LoRA adapters, every base LLM weight and lm_head. That branch was run on the real model as
        train.py builds it (base LLM, tower, projector with the adapter, PEFT LoRA on every LLM Linear), and
        one real step ran under LlavaDoctorCallback: scenario.json has the per-group counts LLaVA-NeXT logs
        since {FIX_COMMIT} and the tensors the step changed.""",
    fixed=f"""
        The same launch from a checkout after commit {FIX_COMMIT} (the real fix; the flags stay as they
        are): with lora_enable the mm_language_model branch leaves the base LLM frozen and the LoRA
        parameters are made trainable again after the global freeze. Only the LoRA adapters, the projector
        and the tower (listed) train.""",
    seen="""
        No error: the run just needs about 3x the memory ("mm_tunable_parts + LoRA = Full-Model Training
        (Unintended)", LLaVA-VL/LLaVA-NeXT#508, ~160 GB of VRAM; PR #510: "unknowingly performing full
        fine-tuning, which increased VRAM usage by ~3x"). The only trace before the fix is LLaVA-NeXT's
            Trainable parameters: ~...
        line; since bfbba5a it also logs per group, e.g. this run's (scenario.json,
        "trainable_parameter_groups"):
            Trainable parameter groups: lora=..., mm_projector=..., vision_resampler=0, vision_tower=..., llm_base=...""",
    mechanism=f"""
        The checkout is a stand-in file holding only the mm_tunable_parts branch (before or after the
        fix), in the words of this project; preflight reads it as it reads a real checkout, and the
        scenario runs the same lines on the PEFT-wrapped core model. The launch uses a Llama LLM with a
        ChatML tokenizer, `--version {VERSION}` and the default flat patch merge instead of OneVision's
        Qwen2, qwen_1_5, anyres and spatial_unpad: the bundled core has no anyres; with spatial_unpad the
        fixed launch still leaves image_newline frozen (which preflight also reports); LLaVA-NeXT's
        preprocess_qwen reads tokenizer attributes transformers 5 removed, and from the second round on
        its other templates do too or count a BOS this tokenizer does not add, so the data is single-round.
        The real step runs in float32 on CPU without DeepSpeed.""",
    codes=("LD301",),
    command=f"llava-doctor preflight {{out}}/{SCRIPT} --workdir {{out}}",
    make=make,
    needs=("peft",),
)
