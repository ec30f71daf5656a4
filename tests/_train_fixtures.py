"""A tiny transformers-native Llava and its data, for real `transformers.Trainer` runs on CPU.

Works with transformers 4.37 (LLaVA's pin: one `<image>` id per image, expanded inside the model)
and 5.x (the input holds one `<image>` id per patch). Shared by tests/test_callback.py and
benchmarks/bench_callback.py.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

IMAGE_TOKEN = 127
VOCAB = 128
IMAGE_SIZE, PATCH = 16, 8


def llava_config(*, hidden: int = 32, layers: int = 2, vocab: int = VOCAB, vision_hidden: int = 32,
                 image_size: int = IMAGE_SIZE, patch: int = PATCH, heads: int = 4):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=512,
                       pad_token_id=0)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab - 1, vision_feature_layer=-2)


def tiny_llava(seed: int = 0, **config_kwargs: Any):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(llava_config(**config_kwargs))


def trained_state(model, dataset, steps: int = 6, batch_size: int = 4, lr: float = 3e-3) -> dict:
    """A state dict after a few full AdamW steps: weights that no longer look freshly initialised."""
    import torch

    collate = collator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        loss = model(**collate([dataset[i] for i in range(step * batch_size, (step + 1) * batch_size)])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def finetune_model(state: dict, **config_kwargs: Any):
    """A tiny Llava holding `state` (as if loaded from a pre-trained checkpoint), tower frozen: LLaVA's finetune stage."""
    model = tiny_llava(**config_kwargs)
    model.load_state_dict(state)
    next(m for name, m in model.named_modules() if name.endswith("vision_tower")).requires_grad_(False)
    return model


def image_tokens(config) -> int:
    """`<image>` ids per image in input_ids: 1 where the model expands it itself (4.x legacy), else one per patch."""
    from transformers import LlavaForConditionalGeneration

    if hasattr(LlavaForConditionalGeneration, "_merge_input_ids_with_image_features"):
        return 1
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


class ImageTextDataset:
    """`size` samples: an image, `text` random ids; the answer (last `answer` ids) is supervised."""

    def __init__(self, config, size: int = 64, text: int = 12, answer: int = 6):
        self.config, self.size, self.text, self.answer = config, size, text, answer
        self.image_ids = image_tokens(config)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        generator = torch.Generator().manual_seed(index)
        vocab = self.config.text_config.vocab_size
        ids = torch.cat([torch.full((self.image_ids,), self.config.image_token_index),
                         torch.randint(3, vocab - 2, (self.text,), generator=generator)])
        labels = ids.clone()
        labels[: ids.numel() - self.answer] = -100
        size = self.config.vision_config.image_size
        return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
                "pixel_values": torch.randn(3, size, size, generator=generator)}


def collator(mask_from_batch: int | None = None) -> Callable[[list[dict]], dict]:
    """Stack items; from the `mask_from_batch`-th batch on (1-based) every label is -100, as LLaVA leaves
    samples it drops on a tokenization mismatch."""
    import torch

    counter = itertools.count(1)

    def collate(items: list[dict]) -> dict:
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        if mask_from_batch is not None and next(counter) >= mask_from_batch:
            batch["labels"].fill_(-100)
        return batch

    return collate


def training_args(output_dir, *, args_class=None, **overrides: Any):
    from transformers import TrainingArguments

    values = dict(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=4, logging_steps=2, report_to=[],
                  save_strategy="no", remove_unused_columns=False, use_cpu=True, disable_tqdm=True, learning_rate=1e-3,
                  dataloader_num_workers=0, seed=0)
    values.update(overrides)
    return (args_class or TrainingArguments)(**values)
