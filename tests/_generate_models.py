"""Models for the generation tests: the trained core model in every layout, and tiny transformers models.

- ``trained_core(out)``: the bundled core's healthy model (trained once per session on the shapes
  dataset, cached in $LLAVA_DOCTOR_CACHE; it names the held-out pictures, so its answer depends on
  the image) and its tokenizer.
- ``save_original(model, tokenizer, out)``: the folder haotian-liu/LLaVA's trainer writes (weights,
  config, tokenizer).
- ``save_hf_llava(model, tokenizer, out)``: the same weights as a transformers ``LlavaForConditionalGeneration``
  folder with a processor whose chat template is the core's prompt, so it answers as the core does.
- ``tiny_next`` / ``tiny_onevision``: random LlavaNext (CLIP + Llama) and LlavaOnevision (SigLIP + Qwen2)
  from configs, with their processors (OneVision's needs torchvision for its video half: in memory,
  ``ImageOnlyOnevisionProcessor`` leaves that half out).
- Broken variants, each a real way the failure happens: ``zero_projector`` (never given its weights),
  ``random_projector`` (newly initialised), ``overflow_fp16`` (activations past 65504),
  ``zero_lm_head`` (a model that repeats one finite token).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

CORE_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}A chat between a curious user and an assistant. "
                 "USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %} ASSISTANT:{% endif %}{% endfor %}")
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
IMAGE_TOKEN = 4  # <image> in the bundled tokenizer


def trained_core(out: Path) -> tuple[Any, Any]:
    from llava_doctor.reproduce._common import quiet
    from llava_doctor.reproduce._trained import trained_model

    with quiet():
        return trained_model(out)


def held_out_images(count: int = 4) -> list[tuple[str, Any]]:
    from PIL import Image

    from llava_doctor.reproduce._trained import held_out_sample

    return [(f"held-out-{i}.png", Image.fromarray(held_out_sample(i).image)) for i in range(count)]


def truth(index: int) -> str:
    from llava_doctor.core.data import QUESTIONS
    from llava_doctor.reproduce._trained import held_out_sample

    sample = held_out_sample(index)
    return QUESTIONS["describe"][1].format(shape=sample.shape, color=sample.color, position=sample.position)


def save_original(model: Any, tokenizer: Any, out: Path, **kwargs: Any) -> Path:
    from llava_doctor.core import savers

    savers.save_llava_original(model, out, **kwargs)
    tokenizer.save_pretrained(str(out))
    return out


def _pil(name: str):
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def save_hf_llava(model: Any, tokenizer: Any, out: Path) -> Path:
    from transformers import LlavaProcessor

    from llava_doctor.core import savers
    from llava_doctor.reproduce._common import quiet

    with quiet():
        savers.save_hf_native(model, out)
        image_processor = _pil("CLIPImageProcessor")(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
        if "chat_template" in inspect.signature(LlavaProcessor.__init__).parameters:
            LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CORE_TEMPLATE, patch_size=8,
                           vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(str(out))
        else:  # transformers 4.37: no chat templates, and a LlavaProcessor takes only Llama tokenizer classes (it
            # reads the folder's tokenizer as one): the files its save_pretrained writes
            image_processor.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
    return out


def _text(model_type: str, vocab: int) -> dict:
    return dict(model_type=model_type, vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                pad_token_id=3)


def _vision(model_type: str) -> dict:
    extra = {"projection_dim": 64} if model_type == "clip_vision_model" else {"vision_use_head": False}
    return dict(model_type=model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=32, patch_size=8, **extra)


def tiny_next(tokenizer: Any, out: Path, seed: int = 0, mutate: Any = None) -> Path:
    """A random LlavaNext (CLIP + Llama, anyres over 32x32 tiles) saved with its processor (`mutate(model)` first)."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    from llava_doctor.reproduce._common import quiet

    torch.manual_seed(seed)
    config = LlavaNextConfig(vision_config=_vision("clip_vision_model"), text_config=_text("llama", 320),
                             image_token_index=IMAGE_TOKEN, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2)
    image_processor = _pil("LlavaNextImageProcessor")(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                      image_grid_pinpoints=PINPOINTS, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    model = LlavaNextForConditionalGeneration(config)
    if mutate is not None:
        mutate(model)
    with quiet():
        model.save_pretrained(str(out))
        LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CORE_TEMPLATE, patch_size=8,
                           vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(str(out))
    return out


def tiny_onevision(seed: int = 0) -> Any:
    """A random LlavaOnevision (SigLIP + Qwen2) in memory."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(vision_config=_vision("siglip_vision_model"), text_config=_text("qwen2", 320),
                                  image_token_index=IMAGE_TOKEN, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full")
    return LlavaOnevisionForConditionalGeneration(config).eval()


def onevision_processor(tokenizer: Any) -> Any:
    """LlavaOnevisionProcessor without its video half (which transformers 5 builds only with torchvision)."""
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            LlavaOnevisionProcessor.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    image_processor = _pil("LlavaOnevisionImageProcessor")(size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS,
                                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ImageOnlyOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CORE_TEMPLATE,
                                       num_image_tokens=16, vision_feature_select_strategy="full")


# ----------------------------------------------------------------------------- broken variants (in place)


def projector_linears(model: Any) -> list[Any]:
    import torch

    from llava_doctor.artifacts.generation import image_path

    path = image_path(model)
    return [m for m in path.projector[1].modules() if isinstance(m, torch.nn.Linear)]


def zero_projector(model: Any) -> Any:
    """A projector that never received its weights and was zero-filled (DeepSpeed/accelerate empty init)."""
    import torch

    with torch.no_grad():
        for linear in projector_linears(model):
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
    return model


def random_projector(model: Any, seed: int = 1) -> Any:
    """A projector newly initialised (PyTorch's Linear init), as when mm_projector.bin is not applied."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for linear in projector_linears(model):
            linear.reset_parameters()
    return model


def zero_lm_head(model: Any) -> Any:
    """An LM head that lost its weights (zero-filled): every logit is 0.0, finite, and greedy decoding
    repeats id 0 - the finite twin of the NaN case."""
    import torch

    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    return model


def overflow_fp16(model: Any, headroom: float = 0.99) -> float:
    """nan-logits' reparametrisation on any family: every tensor that writes into the language model's residual
    stream (embeddings, attention and MLP output projections, the projector's last Linear) times one factor,
    the largest that keeps them representable in float16. RMSNorm divides the factor out, so the model answers
    as before in float32; in float16 its hidden states pass 65504. Returns the factor."""
    import re

    import torch

    writer = re.compile(r"(embed_tokens|self_attn\.o_proj|mlp\.down_proj)\.weight$")
    params = [p for n, p in model.named_parameters() if writer.search(n) and "vision" not in n]
    last = projector_linears(model)[-1]
    params += [last.weight] + ([last.bias] if last.bias is not None else [])
    factor = headroom * 65504.0 / max(float(p.detach().abs().max()) for p in params)
    with torch.no_grad():
        for param in params:
            param.mul_(factor)
    return factor
