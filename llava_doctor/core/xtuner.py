"""XTuner's LLaVA model (InternLM/xtuner ``xtuner/model/llava.py``), reduced to what decides its
module tree, its trainable parameters and what its ``state_dict()`` saves.

- ``LLaVAModel(llm, visual_encoder, freeze_llm, freeze_visual_encoder, visual_select_layer,
  projector_depth, llm_lora, visual_encoder_lora)``: attributes ``llm`` (an HF causal LM, or a
  PEFT model with ``llm_lora``), ``visual_encoder`` (an HF CLIP/SigLIP vision model, or a PEFT
  model) and ``projector`` (``ProjectorModel``: ``model = Sequential(Linear, GELU, Linear, ...)``,
  built after the LLM and the encoder, in the encoder's dtype). ``freeze_llm`` /
  ``freeze_visual_encoder`` call ``requires_grad_(False)``; LoRA wraps after freezing, as XTuner does.
- ``state_dict()`` keeps what XTuner keeps: the LoRA state (or every ``llm.*`` key when the LLM is
  not frozen), the same for the encoder, and the projector always.
- ``forward(pixel_values, input_ids, labels)``: the selected encoder layer (CLS dropped), projected
  and placed before the text (XTuner splices at ``<image>``; one leading image keeps this short).

XTuner subclasses mmengine's ``BaseModel``; this is a plain ``nn.Module`` with the same tree.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

IGNORE_INDEX = -100


class ProjectorConfig(PretrainedConfig):
    model_type = "projector"

    def __init__(self, visual_hidden_size=4096, llm_hidden_size=4096, depth=2, hidden_act="gelu", bias=True, **kwargs):
        self.visual_hidden_size = visual_hidden_size
        self.llm_hidden_size = llm_hidden_size
        self.depth = depth
        self.hidden_act = hidden_act
        self.bias = bias
        super().__init__(**kwargs)


class ProjectorModel(PreTrainedModel):
    config_class = ProjectorConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__(config)
        modules: list[nn.Module] = [nn.Linear(config.visual_hidden_size, config.llm_hidden_size, bias=config.bias)]
        for _ in range(1, config.depth):
            modules.append(ACT2FN[config.hidden_act])
            modules.append(nn.Linear(config.llm_hidden_size, config.llm_hidden_size, bias=config.bias))
        self.model = nn.Sequential(*modules)  # no post_init(), as in XTuner: PyTorch's default Linear init

    def forward(self, x):
        return self.model(x)


def _peft(model, lora_config):
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora_config)


class LLaVAModel(nn.Module):
    def __init__(self, llm, visual_encoder, freeze_llm=False, freeze_visual_encoder=False, visual_select_layer=-2,
                 projector_depth=2, llm_lora=None, visual_encoder_lora=None):
        super().__init__()
        self.freeze_llm = freeze_llm
        self.freeze_visual_encoder = freeze_visual_encoder
        self.llm = llm
        self.visual_encoder = visual_encoder
        self.llm.config.use_cache = False
        self.projector_depth = projector_depth
        projector_config = ProjectorConfig(
            visual_hidden_size=self.visual_encoder.config.hidden_size,
            llm_hidden_size=self.llm.config.hidden_size,
            depth=projector_depth,
        )
        self.projector = ProjectorModel(projector_config).to(self.visual_encoder.dtype)
        if self.freeze_llm:
            self.llm.requires_grad_(False)
        if self.freeze_visual_encoder:
            self.visual_encoder.requires_grad_(False)
        self.use_llm_lora = llm_lora is not None
        self.use_visual_encoder_lora = visual_encoder_lora is not None
        if self.use_llm_lora:
            self.llm = _peft(self.llm, llm_lora)
        if self.use_visual_encoder_lora:
            self.visual_encoder = _peft(self.visual_encoder, visual_encoder_lora)
        self.visual_select_layer = visual_select_layer

    def state_dict(self, *args, **kwargs):
        state_dict = super().state_dict(*args, **kwargs)
        to_return = OrderedDict()
        if self.use_visual_encoder_lora:
            to_return.update({k: v for k, v in state_dict.items() if "visual_encoder." in k and "lora_" in k})
        elif not self.freeze_visual_encoder:
            to_return.update({k: v for k, v in state_dict.items() if "visual_encoder." in k})
        if self.use_llm_lora:
            to_return.update({k: v for k, v in state_dict.items() if "llm." in k and "lora_" in k})
        elif not self.freeze_llm:
            to_return.update({k: v for k, v in state_dict.items() if "llm." in k})
        to_return.update({k: v for k, v in state_dict.items() if "projector." in k})
        return to_return

    def forward(self, pixel_values, input_ids, labels=None, attention_mask=None):
        hidden = self.visual_encoder(pixel_values.to(self.visual_encoder.dtype), output_hidden_states=True).hidden_states
        features = self.projector(hidden[self.visual_select_layer][:, 1:])
        text = self.llm.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([features.to(text.dtype), text], dim=1)
        if labels is not None:
            image_labels = torch.full(features.shape[:2], IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            labels = torch.cat([image_labels, labels], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([torch.ones(features.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device),
                                        attention_mask], dim=1)
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels)


def build_tiny_xtuner(tower_folder: str | Path, *, freeze_llm: bool = False, freeze_visual_encoder: bool = True,
                      llm_lora=None, seed: int = 0, hidden_size: int = 64, vocab_size: int = 256) -> LLaVAModel:
    """A tiny LLaVAModel: a Llama LLM from a config and the CLIP/SigLIP base tower saved in `tower_folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .vision import _classes, tower_kind

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           tie_word_embeddings=False))
        _, vision_class = _classes(tower_kind(tower_folder))
        encoder = vision_class.from_pretrained(str(tower_folder), local_files_only=True)
        return LLaVAModel(llm, encoder, freeze_llm=freeze_llm, freeze_visual_encoder=freeze_visual_encoder, llm_lora=llm_lora)
