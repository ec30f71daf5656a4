"""Model inputs for one prompt about a batch of images, built the way each family's inference code builds them.

An inputs builder is a callable ``build(images, prompt) -> ModelInputs``; the generation adapter
(``artifacts.generation``) receives one and never needs to know the family. Two builders live here
because they need nothing but the model's own processor / tokenizer (the engine never imports the
bundled core):

- ``chat_template_inputs``: transformers-native Llava / LlavaNext / LlavaOnevision: the processor's
  chat template with one image and the prompt, then the processor (it resizes and expands the image
  tokens). A processor without a chat template (transformers 4.37-era folders) gets the prompt the
  llava-hf model cards give, ``USER: <image>\\n{prompt} ASSISTANT:``.
- ``conversation_inputs``: original LLaVA / LLaVA-NeXT: the conversation template named by
  ``conv_mode`` (``--conv-mode``, or inferred from the model name as LLaVA's ``run_llava.py`` infers
  it), ``<image>`` prefixed to the question, ``tokenizer_image_token`` (the image placeholder becomes
  ``image_token_index``, -200 in LLaVA), and ``process_images`` with the config's
  ``image_aspect_ratio`` (``pad`` squares the image with the processor's mean colour).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..tower_loading import loader_model_name

IMAGE_PLACEHOLDER = "<image>"
LLAVA_IMAGE_TOKEN_INDEX = -200  # llava.constants.IMAGE_TOKEN_INDEX
MODEL_CARD_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"  # llava-hf model cards, before chat templates
SUPPORTED_ASPECT_RATIOS = (None, "square", "pad")


@dataclass
class ModelInputs:
    """Keyword arguments for ``model.generate(**kwargs)`` and ``model(**kwargs)`` (batch = the images)."""

    kwargs: dict[str, Any]
    prompt: str  # the rendered prompt text (one image placeholder)
    prompt_ids: list[int]  # the first row's token ids as the model receives them
    notes: list[str] = field(default_factory=list)  # how the prompt was built, where that is a guess


BuildInputs = Callable[[Sequence[Any], str], ModelInputs]


def infer_conv_mode(model_name: str, config: dict | None = None) -> str:
    """The conversation template LLaVA's ``run_llava.py`` picks from the model name; LLaVA-NeXT's Qwen
    models (``LlavaQwenForCausalLM``, whose scripts pass ``qwen_1_5``) are recognised by architecture."""
    name = model_name.lower()
    archs = " ".join(str(a) for a in (config or {}).get("architectures") or []).lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "qwen" in name or "qwen" in archs:
        return "qwen_1_5"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


def tokenizer_image_token(prompt: str, tokenizer: Any, image_token_index: int = LLAVA_IMAGE_TOKEN_INDEX) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: each text chunk tokenized alone (its BOS kept once, at the front),
    ``image_token_index`` where ``<image>`` was."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(image_token_index)
        ids.extend(chunk[offset:])
    return ids


def expand_to_square(image: Any, background: tuple[int, int, int]) -> Any:
    """LLaVA's ``expand2square``: pad the shorter side with `background`, the image centred."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def process_images(images: Sequence[Any], image_processor: Any, image_aspect_ratio: str | None) -> Any:
    """LLaVA's ``process_images`` for ``square``/``pad`` (``anyres`` is refused by the loader, not guessed)."""
    import torch

    if image_aspect_ratio == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        return torch.stack([image_processor.preprocess(expand_to_square(image, background), return_tensors="pt")["pixel_values"][0]
                            for image in images])
    return image_processor(list(images), return_tensors="pt")["pixel_values"]


def question_with_image(prompt: str, *, im_start_end: bool = False) -> str:
    """run_llava's query: ``<image>\\n`` prefixed unless the prompt places it (with the start/end tokens when used)."""
    image = "<im_start><image><im_end>" if im_start_end else IMAGE_PLACEHOLDER
    if IMAGE_PLACEHOLDER in prompt:
        return re.sub(re.escape(IMAGE_PLACEHOLDER), image, prompt)
    return f"{image}\n{prompt}"


def place(kwargs: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    """Tensors to `device`; floating ones (pixels) also to the model's `dtype`."""
    import torch

    out = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out


def chat_template_inputs(processor: Any, *, device: Any, dtype: Any) -> BuildInputs:
    """Inputs of a transformers-native Llava* model through its processor (and chat template)."""
    notes: list[str] = []
    has_template = bool(getattr(processor, "chat_template", None)) and hasattr(processor, "apply_chat_template")
    if not has_template:
        notes.append(f"the processor has no chat template; the prompt is llava-hf's documented {MODEL_CARD_PROMPT!r}")

    def build(images: Sequence[Any], prompt: str) -> ModelInputs:
        if has_template:
            content = [{"type": "image"}, {"type": "text", "text": prompt.replace(IMAGE_PLACEHOLDER, "").strip()}]
            text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        else:
            text = MODEL_CARD_PROMPT.format(prompt=prompt.replace(IMAGE_PLACEHOLDER, "").strip())
        batch = processor(images=list(images), text=[text] * len(images), return_tensors="pt")
        kwargs = place(dict(batch), device, dtype)
        return ModelInputs(kwargs=kwargs, prompt=text, prompt_ids=kwargs["input_ids"][0].tolist(), notes=list(notes))

    return build


def conversation_inputs(tokenizer: Any, image_processor: Any, *, conv_mode: str, image_token_index: int,
                        image_aspect_ratio: str | None, device: Any, dtype: Any,
                        im_start_end: bool = False) -> BuildInputs:
    """Inputs of an original LLaVA / LLaVA-NeXT model the way ``run_llava.py`` builds them."""
    import torch

    from ..templates.conversation import render

    if image_aspect_ratio not in SUPPORTED_ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio {image_aspect_ratio!r} is not supported (known: square, pad)")

    def build(images: Sequence[Any], prompt: str) -> ModelInputs:
        text = render(conv_mode, [question_with_image(prompt, im_start_end=im_start_end), ""]).text
        ids = tokenizer_image_token(text, tokenizer, image_token_index)
        pixels = process_images(images, image_processor, image_aspect_ratio)
        input_ids = torch.tensor([ids] * len(images))
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "images": pixels,
                  "image_sizes": [image.size for image in images]}
        return ModelInputs(kwargs=place(kwargs, device, dtype), prompt=text, prompt_ids=ids)

    return build


def default_inputs(model: Any, processor_or_tokenizer: Any, *, conv_mode: str | None = None) -> BuildInputs:
    """The inputs builder for a live model given only its processor or tokenizer: a transformers processor
    (it has ``image_processor`` and ``tokenizer``) builds with its chat template; a tokenizer with an
    original LLaVA / LLaVA-NeXT model builds with the tower's ``image_processor`` and the conversation
    template `conv_mode` (inferred from the config's ``_name_or_path`` as run_llava.py infers it)."""
    from ..findings import InputError

    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = first.device if first is not None else "cpu"
    dtype = getattr(model, "dtype", None) or (first.dtype if first is not None else None)
    if hasattr(processor_or_tokenizer, "image_processor") and hasattr(processor_or_tokenizer, "tokenizer"):
        return chat_template_inputs(processor_or_tokenizer, device=device, dtype=dtype)
    tower = model.get_vision_tower() if callable(getattr(model, "get_vision_tower", None)) else None
    if tower is None or not callable(getattr(processor_or_tokenizer, "__call__", None)):
        raise InputError(f"{type(processor_or_tokenizer).__name__}: pass the model's processor (transformers Llava*) or, "
                         "for an original LLaVA / LLaVA-NeXT model, its tokenizer (or an inputs builder)")
    try:
        image_processor = tower.image_processor
    except AttributeError:
        raise InputError("the vision tower is not loaded (no image_processor): call vision_tower.load_model() first") from None
    config = model.config
    settings = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    conv_mode = conv_mode or infer_conv_mode(loader_model_name(str(settings.get("_name_or_path") or "")), settings)
    return conversation_inputs(
        processor_or_tokenizer, image_processor, conv_mode=conv_mode,
        image_token_index=int(settings.get("image_token_index", LLAVA_IMAGE_TOKEN_INDEX)),
        image_aspect_ratio=settings.get("image_aspect_ratio"), device=device, dtype=dtype,
        im_start_end=bool(settings.get("mm_use_im_start_end")))
