"""Tiny live models for the live checks' examples: real transformers / core / PEFT modules, built in milliseconds.

Everything heavy is imported inside the builders, so importing the checks stays cheap.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

from llava_doctor.registry import Context

VOCAB = 128
HIDDEN = 32


def hf_llava(seed: int = 0, *, family: str = "llava", vocab: int = VOCAB):
    """A transformers-native Llava / LlavaNext / LlavaOnevision with a 2-layer CLIP (SigLIP for OneVision) and Llama/Qwen2."""
    import torch
    import transformers as tf

    vision = dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    text = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "llava":
            config = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**vision), text_config=tf.LlamaConfig(**text),
                                    image_token_index=vocab - 1)
            return tf.LlavaForConditionalGeneration(config)
        grid = [[32, 32], [32, 64], [64, 32], [64, 64]]
        if family == "llava_next":
            config = tf.LlavaNextConfig(vision_config=tf.CLIPVisionConfig(**vision), text_config=tf.LlamaConfig(**text),
                                        image_token_index=vocab - 1, image_grid_pinpoints=grid)
            return tf.LlavaNextForConditionalGeneration(config)
        config = tf.LlavaOnevisionConfig(vision_config=tf.SiglipVisionConfig(**vision), text_config=tf.Qwen2Config(**text),
                                         image_token_index=vocab - 1, image_grid_pinpoints=grid)
        return tf.LlavaOnevisionForConditionalGeneration(config)


def hf_part(model, name: str):
    """``vision_tower`` / ``multi_modal_projector`` of a transformers Llava: under ``model.model`` in 5.x, at the top
    in 4.x (the LLM body is ``model.get_decoder()`` and the head ``model.get_output_embeddings()`` in both)."""
    body = getattr(model, "model", None)
    return getattr(body if hasattr(body, name) else model, name)


def with_text_vocab(model, vocab: int):
    """The config's vocab_size changed after the model was built (the embedding keeps its rows)."""
    model.config.text_config.vocab_size = vocab
    return model


def poisoned(model, name: str, value: float = float("nan"), count: int = 3):
    """`count` elements of the parameter whose name ends with `name` set to `value`."""
    import torch

    param = next(p for n, p in model.named_parameters() if n.endswith(name))
    with torch.no_grad():
        param.view(-1)[:count] = value
    return model


def backward(model, scale: float = 1.0):
    """One forward/backward of a text batch; `scale` multiplies the loss (inf: the gradients overflow)."""
    import torch

    ids = torch.randint(0, VOCAB - 2, (2, 8), generator=torch.Generator().manual_seed(0))
    (model(input_ids=ids, labels=ids).loss * scale).backward()
    return model


def on_meta(build: Callable[[], Any]):
    import torch

    with torch.device("meta"):
        return build()


def trained_tower(model, steps: int = 2):
    """A few real AdamW steps on the vision tower of a transformers Llava (a regression on its own output on random
    pixels), so that it no longer holds its class's initialisation - a stand-in for CLIP's pretraining."""
    import torch

    tower = hf_part(model, "vision_tower")
    size = tower.config.image_size
    optimizer = torch.optim.AdamW(tower.parameters(), lr=1e-2)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = (tower(pixels).last_hidden_state - 1.0).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def fresh_linear_projector(model):
    """The projector re-drawn with PyTorch's default nn.Linear init: LLaVA builds it after the LLM is loaded, so a
    projector that never got its mm_projector.bin holds exactly this."""
    import torch

    with torch.no_grad():
        for module in hf_part(model, "multi_modal_projector").modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    return model


def trained_projector(model, steps: int = 5):
    """A few AdamW steps on the projector alone (a regression on random features): what pretraining leaves behind,
    in miniature - weights past the initializer's bound, biases off zero."""
    import torch

    projector = next(m for n, m in model.named_modules() if n.endswith(("mm_projector", "multi_modal_projector")))
    first = next(m for m in projector.modules() if isinstance(m, torch.nn.Linear))
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, first.in_features, generator=generator)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-2)
    target = None
    for _ in range(steps):
        out = projector(features)
        target = torch.randn(out.shape, generator=generator) if target is None else target
        loss = (out - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def with_flags(model, **flags: Any):
    """LLaVA's training flags recorded in the model's config (as train.py records them), e.g. tune_mm_mlp_adapter."""
    for key, value in flags.items():
        setattr(model.config, key, value)
    return model


def freeze(model, *trainable: str):
    """requires_grad only for parameters whose name contains one of `trainable` (LLaVA's train.py freezing)."""
    for name, param in model.named_parameters():
        param.requires_grad_(any(part in name for part in trainable))
    return model


def emptied(model, part: str):
    """Every parameter under `part` replaced by a [0] tensor, as tensors taken from a ZeRO-3 module without
    GatheredParameters are (the module keeps no partition behind them)."""
    import torch

    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if any(part in full for full, p in model.named_parameters() if p is param):
                setattr(module, name, torch.nn.Parameter(param.detach()[:0].reshape(0), requires_grad=param.requires_grad))
    return model


def lora(model, target: str = r".*language_model.*\.(q_proj|v_proj)"):
    """PEFT LoRA on the language model's attention (peft is the optional `lora` extra; tests install it)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target))


def adamw_trainable(model):
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def freeze_tower_after_adamw(model):
    """An optimizer over every parameter, then the tower frozen: frozen parameters inside the optimizer."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    hf_part(model, "vision_tower").requires_grad_(False)
    return optimizer


def unfreeze_projector_after_adamw(model):
    """The optimizer built over what trains now, then the projector made trainable: it never reaches the optimizer."""
    optimizer = adamw_trainable(model)
    hf_part(model, "multi_modal_projector").requires_grad_(True)
    return optimizer


def quiet_load(load: Callable[[], Any]) -> Any:
    """Run a transformers load without its LOAD REPORT and progress bars."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return load()
    finally:
        transformers.logging.set_verbosity(verbosity)


def live(build: Callable[[], Any], *, stage: str | None = None, optimizer: Callable[[Any], Any] | None = None,
         name: str | None = None) -> Callable[[], Any]:
    """An Example.build: the LiveModel of `build()` (with an optimizer made from the model, when given)."""
    def make():
        from llava_doctor.artifacts.live import inspect_model

        model = build()
        return inspect_model(model, stage=stage, optimizer=optimizer(model) if optimizer else None, name=name)

    return make


def live_context(**options: Any) -> Callable[[], Context]:
    return lambda: Context(deep=True, options=options)


def scratch_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"llava-doctor-example-{prefix}-", dir=os.environ.get("TMPDIR"))
