"""The healthy reference run: train the tiny model on the embedded dataset and measure what it learnt.

``train_healthy_model`` is the recipe the learnability test and the healthy twins of the
reproduction scenarios use; ``describe_accuracy`` asks every held-out picture "Describe the
image." and checks that the greedy answer names its shape, colour and position.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from .data import DESCRIBE_PROMPT, ConversationDataset, ShapeSample, default_splits
from .model import build_tiny_model, generate_greedy
from .stages import apply_stage
from .tokenizer import load_tokenizer
from .train import HEALTHY_CONFIG, TrainConfig, TrainResult, train


@dataclass
class DescribeAccuracy:
    shape: float
    color: float
    position: float
    shape_and_color: float
    samples: int
    examples: list[tuple[str, str]]  # (expected description, generated text) for the first few


def describe_accuracy(model, tokenizer, samples: Sequence[ShapeSample], max_new_tokens: int = 12) -> DescribeAccuracy:
    hits = {"shape": 0, "color": 0, "position": 0, "both": 0}
    examples = []
    for sample in samples:
        text = generate_greedy(model, tokenizer, sample.image, DESCRIBE_PROMPT, max_new_tokens).text
        shape, color, position = sample.shape in text, sample.color in text, sample.position in text
        hits["shape"] += shape
        hits["color"] += color
        hits["position"] += position
        hits["both"] += shape and color
        if len(examples) < 5:
            examples.append((f"A {sample.color} {sample.shape} at the {sample.position}.", text))
    n = len(samples)
    return DescribeAccuracy(hits["shape"] / n, hits["color"] / n, hits["position"] / n, hits["both"] / n, n, examples)


def train_healthy_model(
    root: str | Path | None = None,
    *,
    llm: str = "llama",
    vision: str = "clip",
    stage: str = "finetune",
    config: TrainConfig | None = None,
    n_train: int = 480,
    seed: int = 0,
    **model_kwargs,
):
    """Build (tower cached under `root`), apply `stage`, train on the embedded data; returns (model, tokenizer, TrainResult)."""
    tokenizer = load_tokenizer()
    train_samples, _ = default_splits(n_train=n_train, seed=seed)
    model = apply_stage(build_tiny_model(root, llm, vision, seed=seed, **model_kwargs), stage)
    result: TrainResult = train(model, ConversationDataset(train_samples, tokenizer), config or replace(HEALTHY_CONFIG, seed=seed))
    return model, tokenizer, result
