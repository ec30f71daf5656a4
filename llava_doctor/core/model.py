"""The bundled LLaVA model: transformers' Llama/Qwen2 causal LMs with LLaVA's multimodal parts.

The module tree is haotian-liu/LLaVA's (``LlavaLlamaForCausalLM.model`` is the LLM body that also
holds ``vision_tower``, ``mm_projector`` and, for ``*unpad*`` merge types, ``image_newline``), so
``state_dict()`` keys are exactly the original layout::

    model.embed_tokens.weight, model.layers.{i}.*, model.norm.weight, lm_head.weight,
    model.mm_projector.{0,2}.{weight,bias}, model.vision_tower.vision_tower.<CLIP/SigLIP keys>

Images enter through ``forward(..., images=)``: every ``<image>`` id (``config.image_token_index``)
in ``input_ids`` is replaced by the projected patch features, labels get -100 there, and the
batch is re-padded on the right. One image per sample; a sample without ``<image>`` is text-only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM, Qwen2Model, Qwen2PreTrainedModel

from .configs import DEFAULT_PRETRAIN_STEPS, LlavaLlamaConfig, LlavaQwenConfig, prepare_vision_tower, tiny_config
from .data import IGNORE_INDEX, image_to_tensor, prompt_ids
from .projector import build_projector
from .vision import VisionTower


class LlavaMetaModel:
    """Mixin for the LLM body: builds the vision tower, projector and image_newline from the config."""

    def init_multimodal(self, config) -> None:
        if not getattr(config, "mm_vision_tower", None):
            return
        self.vision_tower = VisionTower(config.mm_vision_tower, config, delay_load=getattr(config, "delay_load", False))
        self.mm_projector = build_projector(config.mm_projector_type, config.mm_hidden_size, config.hidden_size)
        if "unpad" in (getattr(config, "mm_patch_merge_type", None) or ""):
            self.image_newline = nn.Parameter(torch.empty(config.hidden_size))
        # LLaVA builds the projector after the LLM is loaded, so it keeps PyTorch's default Linear init
        # (not the LLM's std-0.02 normal, which shrinks image tokens ~20x); LLaVA-NeXT draws
        # image_newline with std 1/sqrt(hidden). _init_weights repeats this for keys missing on load.
        self._init_weights(self)

    def get_vision_tower(self) -> VisionTower | None:
        return getattr(self, "vision_tower", None)

    def _init_weights(self, module):
        """transformers' init hook (construction and keys missing on load): projector and image_newline
        get LLaVA's init, everything else the LLM's."""
        projector = getattr(self, "mm_projector", None)
        if projector is not None and any(module is m for m in projector.modules()):
            if isinstance(module, nn.Linear):
                torch.no_grad()(module.reset_parameters)()
            return
        if module is self:
            newline = getattr(self, "image_newline", None)
            if newline is not None:
                with torch.no_grad():
                    newline.copy_(torch.randn(newline.shape, dtype=newline.dtype) / math.sqrt(newline.numel()))
        super()._init_weights(module)


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaLlamaConfig

    def __init__(self, config):
        LlamaModel.__init__(self, config)
        self.init_multimodal(config)


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwenConfig

    def __init__(self, config):
        Qwen2Model.__init__(self, config)
        self.init_multimodal(config)


class LlavaMetaForCausalLM:
    """The image splice and the multimodal forward shared by both LLM families."""

    def get_model(self):
        return self.model

    def _init_weights(self, module):
        """transformers 4.x applies the outermost model's hook to every submodule (5.x the nearest
        PreTrainedModel's): route it through the LLM body's, whose rule covers the projector and image_newline."""
        self.get_model()._init_weights(module)

    def get_vision_tower(self) -> VisionTower | None:
        return self.model.get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, P, hidden): tower features, projected (+ image_newline when present)."""
        features = self.get_vision_tower()(images)
        projector = self.model.mm_projector
        projector_param = next(projector.parameters(), None)
        if projector_param is not None:  # bf16 projector on fp32 features: cast like LLaVA's .to(dtype)
            features = features.to(projector_param.dtype)
        features = projector(features)
        newline = getattr(self.model, "image_newline", None)
        if newline is not None:
            features = torch.cat([features, newline.to(features.dtype).expand(features.shape[0], 1, -1)], dim=1)
        return features

    def prepare_multimodal_inputs(self, input_ids, attention_mask, labels, images):
        """Splice image features into the embeddings; returns (inputs_embeds, attention_mask, position_ids, labels)."""
        image_token = self.config.image_token_index
        features = self.encode_images(images)
        embed = self.get_model().embed_tokens
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows_embeds, rows_labels = [], []
        for row in range(input_ids.shape[0]):
            keep = attention_mask[row].bool()
            ids = input_ids[row][keep]
            row_labels = labels[row][keep] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
            positions = (ids == image_token).nonzero().flatten().tolist()
            if len(positions) > 1 or row >= features.shape[0] and positions:
                raise ValueError(
                    f"Image features and image tokens do not match: tokens: {len(positions)}, features: "
                    f"{1 if row < features.shape[0] else 0} (sample {row})"
                )
            if not positions:  # text-only sample: keep the image path in the graph with an empty slice
                rows_embeds.append(torch.cat([embed(ids), features[0][:0]]))
                rows_labels.append(row_labels)
                continue
            at = positions[0]
            image_features = features[row]
            rows_embeds.append(torch.cat([embed(ids[:at]), image_features, embed(ids[at + 1 :])]))
            image_labels = torch.full((image_features.shape[0],), IGNORE_INDEX, dtype=row_labels.dtype, device=ids.device)
            rows_labels.append(torch.cat([row_labels[:at], image_labels, row_labels[at + 1 :]]))
        limit = getattr(self.config, "tokenizer_model_max_length", None)
        if limit:
            rows_embeds = [e[:limit] for e in rows_embeds]
            rows_labels = [lab[:limit] for lab in rows_labels]
        longest = max(e.shape[0] for e in rows_embeds)
        batch, hidden = len(rows_embeds), rows_embeds[0].shape[1]
        device, dtype = rows_embeds[0].device, rows_embeds[0].dtype
        new_embeds = torch.zeros(batch, longest, hidden, dtype=dtype, device=device)
        new_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=device)
        new_mask = torch.zeros(batch, longest, dtype=attention_mask.dtype, device=device)
        position_ids = torch.zeros(batch, longest, dtype=torch.long, device=device)
        for row, (row_embeds, row_labels) in enumerate(zip(rows_embeds, rows_labels)):
            length = row_embeds.shape[0]
            new_embeds[row, :length] = row_embeds
            new_labels[row, :length] = row_labels
            new_mask[row, :length] = 1
            position_ids[row, :length] = torch.arange(length, device=device)
        return new_embeds, new_mask, position_ids, (new_labels if labels is not None else None)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        images=None,
        image_sizes=None,  # LLaVA-NeXT's anyres sizes; single-patch images need none
        **kwargs,
    ):
        # the KV cache (`past_key_values`, `cache` in transformers >= 5.24) and `logits_to_keep` (transformers >= 4.45;
        # `num_logits_to_keep` before) travel in kwargs under whichever name the caller used: naming them here would
        # trip one version's deprecation warning or the other's TypeError
        if inputs_embeds is None and images is not None and self.get_vision_tower() is not None:
            inputs_embeds, attention_mask, position_ids, labels = self.prepare_multimodal_inputs(
                input_ids, attention_mask, labels, images
            )
            input_ids = None
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        """LLaVA's ``generate``: the image is spliced into the prompt's embeddings once, then the LLM decodes
        from ``inputs_embeds`` with its KV cache (later steps never see the image path again). Returns the
        new tokens only, as transformers does for ``inputs_embeds``. ``input_ids=`` is accepted for ``inputs``."""
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported")
        inputs = kwargs.pop("input_ids", None) if inputs is None else inputs
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("position_ids", None)
        if images is not None and self.get_vision_tower() is not None:
            inputs_embeds, attention_mask, _, _ = self.prepare_multimodal_inputs(inputs, attention_mask, None, images)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        output = super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        if _generate_returns_its_bos_seed():
            if isinstance(output, torch.Tensor):
                return output[:, 1:]
            output.sequences = output.sequences[:, 1:]
        return output


def _generate_returns_its_bos_seed() -> bool:
    """transformers < 4.38 (LLaVA's 4.37 pin) decodes from ``inputs_embeds`` after a BOS column it seeds
    ``input_ids`` with, and returns that column; 4.38 seeds an empty one (new tokens only)."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).release < (4, 38)


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaLlamaConfig

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class LlavaQwenForCausalLM(LlavaMetaForCausalLM, Qwen2ForCausalLM):
    config_class = LlavaQwenConfig

    def __init__(self, config):
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = LlavaQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


LlavaQwen2ForCausalLM = LlavaQwenForCausalLM
MODEL_CLASSES = {"llama": LlavaLlamaForCausalLM, "qwen2": LlavaQwenForCausalLM}

for _config_class, _model_class in ((LlavaLlamaConfig, LlavaLlamaForCausalLM), (LlavaQwenConfig, LlavaQwenForCausalLM)):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _model_class, exist_ok=True)


def model_class_for(config) -> type:
    return LlavaQwenForCausalLM if isinstance(config, LlavaQwenConfig) else LlavaLlamaForCausalLM


def build_model(config, seed: int = 0):
    """Construct the model from `config` with a fixed seed (the tower's weights come from its folder)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class_for(config)(config)


def build_tiny_model(
    root: str | Path | None = None,
    llm: str = "llama",
    vision: str = "clip",
    projector: str = "mlp2x_gelu",
    *,
    seed: int = 0,
    tower_seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    **config_kwargs,
):
    """Prepare the base tower under `root` (default: the cache; once) and build a tiny model on it: the usual entry point."""
    vision_kwargs = config_kwargs.pop("vision_kwargs", None) or {}
    tower = prepare_vision_tower(root, vision, seed=tower_seed, pretrain_steps=pretrain_steps, **vision_kwargs)
    config = tiny_config(llm, vision, projector, vision_tower=tower, vision_kwargs=vision_kwargs, **config_kwargs)
    return build_model(config, seed=seed)


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    token_ids: list[int]  # the generated ids only
    text: str  # decoded generated ids, special tokens skipped
    all_logits_finite: bool


@torch.no_grad()
def generate_greedy(model, tokenizer, image: Any, prompt: str, max_new_tokens: int = 16) -> GenerationResult:
    """Greedy decoding of the answer to `prompt` about `image` ((H, W, 3) uint8 or (3, H, W) tensor).

    Full re-encoding each step (no KV cache): the model is tiny and this keeps the image splice
    identical to training. argmax over NaN logits yields id 0, as real greedy decoding does.
    """
    was_training = model.training
    model.eval()
    try:
        images = image if isinstance(image, torch.Tensor) else image_to_tensor(image)
        images = images.unsqueeze(0) if images.dim() == 3 else images
        ids = prompt_ids(tokenizer, prompt, with_image=True)
        generated: list[int] = []
        finite = True
        for _ in range(max_new_tokens):
            input_ids = torch.tensor([ids + generated])
            logits = model(input_ids=input_ids, images=images.to(model.dtype)).logits[0, -1].float()
            finite = finite and bool(torch.isfinite(logits).all())
            next_id = int(torch.argmax(logits))
            generated.append(next_id)
            if next_id == tokenizer.eos_token_id:
                break
        text = tokenizer.decode(generated, skip_special_tokens=True)
        return GenerationResult(prompt_ids=ids, token_ids=generated, text=text.strip(), all_logits_finite=finite)
    finally:
        model.train(was_training)
