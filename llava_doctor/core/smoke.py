"""`preflight --smoke`: one real training step of the launch, before the real run spends its GPU-hours.

Part of the bundled core, a CLIENT of the engine (like a user's training script): it builds the model with
the core's LLaVA-compatible classes (``llava_doctor.core.model``); the ``preflight`` command imports it. What it does
follows the launch's train.py: the base LLM from ``--model_name_or_path`` (its real weights, in
bfloat16 with ``--bf16``), ``initialize_vision_modules`` (the tower from ``--vision_tower`` with its
weights, a new projector of ``--mm_projector_type``, ``--pretrain_mm_mlp_adapter`` loaded into it,
``image_newline`` for ``*unpad*``), LoRA from PEFT when ``--lora_enable``, requires_grad as the
codebase sets it (``stages.predicted_trainable``); one batch of the launch's first records through
the project's recipe of that codebase (the labels train.py computes) and the tower's image
processor; then ``LlavaDoctorCallback``: the live checks at train start (LD301, LD304, LD305, ...),
one forward/backward, and the step's loss, gradient norm and labels (LD402 non-finite loss or
gradients, LD403 a batch with no supervised token, LD405 an implausible first loss).

What cannot be done here (weights not on this machine, an LLM family the core does not build) is an
input error of the report - exit code 2 - never a pass.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import replace
from typing import Any, Iterable, Sequence

from ..artifacts.launch import PHASE_LABELS, Launch, phase_rank
from ..findings import InputError, Report, one_line

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
LLM_FAMILIES = {"llama": "llama", "llava_llama": "llama", "qwen2": "qwen2", "llava_qwen": "qwen2"}
BATCH = 2
SMOKE = "--smoke"
IMAGE_TOKEN_INDEX = -200  # what LLaVA's tokenizer_image_token puts where <image> was


def _weights(folder: str | None) -> bool:
    return bool(folder) and any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILES)


def _why_not(launch: Launch) -> str | None:
    model, tower = launch.model, launch.tower
    if model is None or not model.found or not _weights(model.path):
        return f"the weights of --model_name_or_path {launch.arg('model_name_or_path')} are not on this machine"
    if LLM_FAMILIES.get(str((model.config or {}).get("model_type"))) is None:
        return (f"model_type {(model.config or {}).get('model_type')!r}: the bundled core builds LLaVA on Llama and "
                "Qwen2 LLMs only")
    if not launch.arg("vision_tower"):
        return "no --vision_tower: the smoke step builds a multimodal model"
    if tower is None or not tower.found or not _weights(tower.path):
        return f"the weights of --vision_tower {launch.arg('vision_tower')} are not on this machine"
    if not launch.records:
        return "no training records to make a batch from"
    return None


def _dtype(launch: Launch, device: str):
    import torch

    if launch.arg("bf16", False):
        return torch.bfloat16
    if launch.arg("fp16", False) and device.startswith("cuda"):
        return torch.float16
    return torch.float32


def build_model(launch: Launch, dtype: Any):
    """The model train.py builds for this launch (original-LLaVA module tree, the core's classes)."""
    from .configs import LlavaLlamaConfig, LlavaQwenConfig
    from .model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM
    from .vision import read_vision_config
    from ..quiet import quiet_libraries

    model_ref, tower_ref = launch.model, launch.tower
    family = LLM_FAMILIES[str(model_ref.config.get("model_type"))]
    config_class, model_class = ((LlavaQwenConfig, LlavaQwenForCausalLM) if family == "qwen2"
                                 else (LlavaLlamaConfig, LlavaLlamaForCausalLM))
    with quiet_libraries():
        config = config_class.from_pretrained(model_ref.path)
        existing = bool(model_ref.config.get("mm_vision_tower"))
        if existing:  # a LLaVA checkpoint: its __init__ builds tower and projector from its config
            config.mm_vision_tower = tower_ref.path
            config.delay_load = True
        model = model_class.from_pretrained(model_ref.path, config=config, torch_dtype=dtype)
    vision = read_vision_config(tower_ref.path)
    config = model.config
    config.mm_vision_tower = tower_ref.path
    config.mm_vision_select_layer = launch.arg("mm_vision_select_layer", -1)
    config.mm_vision_select_feature = launch.arg("mm_vision_select_feature", "patch")
    config.mm_patch_merge_type = launch.arg("mm_patch_merge_type", "flat")
    config.image_token_index = IMAGE_TOKEN_INDEX
    config.tokenizer_model_max_length = launch.arg("model_max_length")
    body = model.get_model()
    if existing:
        body.get_vision_tower().load_model()
    else:
        config.mm_projector_type = launch.arg("mm_projector_type", "linear")
        config.mm_hidden_size = vision.hidden_size
        config.delay_load = False
        body.init_multimodal(config)
    body.to(dtype)
    adapter = launch.adapter
    if adapter is not None and adapter.path:
        _load_adapter(body.mm_projector, adapter.path)
    return model



def _load_adapter(projector, path: str) -> None:
    import torch

    from ..artifacts.torch_format import disallowed, inspect_globals

    unsafe = disallowed(inspect_globals(path)[0])
    if unsafe:
        raise InputError(f"{path}: pickle globals outside the allow-list ({', '.join(unsafe[:3])}); not loaded")
    weights = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.split("mm_projector.", 1)[1]: v for k, v in weights.items() if "mm_projector." in k}
    projector.load_state_dict(state)


def apply_trainable(model, launch: Launch):
    """requires_grad as the codebase's train.py sets it; LoRA adapters from PEFT when --lora_enable."""
    from .stages import LORA_TARGET, component_of_parameter
    from ..preflight.policy import launch_policy

    trainable = launch_policy(launch).trainable
    if launch.arg("lora_enable", False):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=int(launch.arg("lora_r", 64)), lora_alpha=int(launch.arg("lora_alpha", 16)),
                            lora_dropout=0.0, target_modules=LORA_TARGET, bias="none", task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, config)
    for name, param in model.named_parameters():
        param.requires_grad_(bool(trainable.get(component_of_parameter(name), False)))
    return model


def make_batch(launch: Launch, tokenizer: Any, image_processor: Any, device: str, dtype: Any) -> dict[str, Any]:
    """The first records of the launch through the codebase's recipe (train.py's labels) and the tower's processor."""
    import torch
    from PIL import Image

    from ..artifacts.dataset import build_dataset
    from ..templates.recipes import resolve_template

    records = [r for r in launch.records if isinstance(r, dict) and isinstance(r.get("image"), str)][:BATCH] \
        or launch.records[:BATCH]
    template = resolve_template(launch.recipe, str(launch.arg("version", "v0")))[0].name
    dataset = build_dataset("smoke", records, tokenizer, template, recipe=launch.recipe,
                            max_length=launch.arg("model_max_length"))
    rows = [a.result for a in dataset.analyses()]
    crashed = [r.crash for r in rows if r.crash]
    if crashed:
        raise InputError(f"the training code's preprocessing raises on the first records: {crashed[0]}")
    pad = dataset.tokenizer.pad_token_id if dataset.tokenizer.pad_token_id is not None else 0
    longest = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for k, row in enumerate(rows):
        input_ids[k, :len(row.input_ids)] = torch.tensor(row.input_ids)
        labels[k, :len(row.labels)] = torch.tensor(row.labels)
        mask[k, :len(row.input_ids)] = 1
    folder = launch.arg("image_folder") or ""
    folder = folder if os.path.isabs(folder) else os.path.join(launch.workdir, folder)
    images = []
    for record in records:
        if isinstance(record.get("image"), str):
            with Image.open(os.path.join(folder, record["image"])) as image:
                images.append(image.convert("RGB"))
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"] if images else None
    batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
    if pixels is not None:
        batch["images"] = pixels.to(device=device, dtype=dtype)
    return batch


def _grad_norm(model) -> float:
    import torch

    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def smoke_step(launch: Launch, *, device: str | None = None, stage: str | None = None, select: Iterable[str] = ("ALL",),
               ignore: Sequence[str] = ()) -> Report:
    """One real step of the launch; the findings it produced (phase "step 1"), or an input error saying why it could not run."""
    report = Report()
    why = _why_not(launch)
    if why:
        report.add_input_error(SMOKE, f"smoke step not run: {why}")
        return report
    import torch

    from ..callback import LlavaDoctorCallback
    from .builder import resolve_device
    from ..quiet import quiet_libraries
    from ..preflight.policy import launch_policy
    from ..preflight.tokenizer import load_training_tokenizer

    started = time.perf_counter()
    try:
        device = resolve_device(device or "cpu")
        dtype = _dtype(launch, device)
        tokenizer, _note = load_training_tokenizer(launch.model.path, launch.codebase, launch.model.value,
                                                   launch.arg("model_max_length"))
        model = build_model(launch, dtype)
        model = apply_trainable(model, launch).to(device)
        tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else model.base_model.model.get_vision_tower()
        batch = make_batch(launch, tokenizer, tower.image_processor, device, dtype)
    except InputError as exc:
        report.add_input_error(SMOKE, f"smoke step not run: {exc}")
        return report
    except Exception as exc:  # the training code would stop here too: say where and why
        report.add_input_error(SMOKE, f"building the model as train.py does failed: {type(exc).__name__}: "
                                      f"{one_line(exc, 300)}")
        return report
    built = time.perf_counter()
    name = f"{launch.name} (--smoke)"
    doctor = LlavaDoctorCallback(on_problem="warn", stage=stage or launch_policy(launch).stage, select=select,
                                 ignore=ignore, tokenizer=tokenizer, name=name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] or [torch.zeros(1, requires_grad=True)])
    with quiet_libraries(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the callback warns per finding; the report has them all
        doctor.on_train_begin(model=model, optimizer=optimizer)
        model.train()
        try:
            loss = model(**batch).loss
            loss.backward()
        except Exception as exc:  # the first step itself fails: that is the answer, not a pass
            report.add_input_error(name, f"the first forward/backward raised {type(exc).__name__}: "
                                         f"{one_line(exc, 300)}")
            return report
        grad_norm = _grad_norm(model)
        doctor.observe_step(1, float(loss.detach().float()), grad_norm, batch={"labels": batch["labels"]})
    out = doctor.report()
    for artifact, message in out.input_errors:
        report.add_input_error(name, message)
    report.add_artifact(name)
    report.extend(replace(f, artifact=name, extra={**f.extra, "phase": "step 1", "phase_rank": phase_rank("step 1"),
                                                   "when": PHASE_LABELS["step 1"]}) for f in out.findings)
    value = float(loss.detach().float())
    report.stats["smoke"] = {
        "device": device, "dtype": str(dtype).replace("torch.", ""), "batch": int(batch["input_ids"].shape[0]),
        "loss": value if math.isfinite(value) else str(value), "grad_norm": grad_norm if math.isfinite(grad_norm) else str(grad_norm),
        "supervised_tokens": int((batch["labels"] != -100).sum()), "notes": list(doctor.notes),
    }
    report.timings["smoke"] = {"build": round(built - started, 3), "step": round(time.perf_counter() - built, 3)}
    return report
