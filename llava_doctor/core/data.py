"""The embedded default dataset: synthetic shapes with LLaVA-format conversations about them.

Every sample is one 32x32 picture of a coloured shape at a position, plus a short multi-turn
conversation in LLaVA's JSON format::

    {"id": "shapes-00000", "image": "shapes-00000.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat shape is this?"},
                       {"from": "gpt", "value": "A circle."}, ...]}

The bundled model is trained with a simple LLaVA-v1-like template (``render_segments``)::

    <s>SYSTEM USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>

Each segment is tokenized on its own, so the labels are exact by construction: -100 on the
BOS, the system prompt, every ``USER: ... ASSISTANT:`` span and (in the model) on image
positions; the answers and their ``</s>`` are supervised.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .images import COLORS, IMAGE_SIZE, POSITIONS, SHAPES, draw_image, read_png, write_png

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
SYSTEM_PROMPT = "A chat between a curious user and an assistant."
BOS, EOS = "<s>", "</s>"

# question -> answer pattern; "describe" is the one held-out evaluation asks
QUESTIONS = {
    "describe": ("Describe the image.", "A {color} {shape} at the {position}."),
    "shape": ("What shape is this?", "A {shape}."),
    "color": ("What color is the shape?", "It is {color}."),
    "position": ("Where is the shape?", "At the {position}."),
}
DESCRIBE_PROMPT = QUESTIONS["describe"][0]


@dataclass
class ShapeSample:
    """One picture and its conversation (LLaVA JSON record via ``record``)."""

    id: str
    shape: str
    color: str
    position: str
    image: np.ndarray  # (32, 32, 3) uint8
    conversations: list[dict[str, str]] = field(default_factory=list)

    @property
    def image_file(self) -> str:
        return f"{self.id}.png"

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image_file, "conversations": self.conversations}


def make_conversation(shape: str, color: str, position: str, rng: np.random.Generator) -> list[dict[str, str]]:
    """1-3 question/answer rounds in random order; the first question carries the image placeholder."""
    kinds = list(rng.permutation(list(QUESTIONS)))[: int(rng.integers(1, 4))]
    turns: list[dict[str, str]] = []
    for round_index, kind in enumerate(kinds):
        question, answer = QUESTIONS[kind]
        if round_index == 0:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": answer.format(shape=shape, color=color, position=position)})
    return turns


def build_samples(count: int, seed: int = 0, prefix: str = "shapes") -> list[ShapeSample]:
    """`count` samples cycling through every (shape, color, position) in a seeded order."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(SHAPES, COLORS, POSITIONS))
    order = rng.permutation(len(combos))
    samples = []
    for index in range(count):
        shape, color, position = combos[order[index % len(combos)]]
        samples.append(
            ShapeSample(
                id=f"{prefix}-{seed}-{index:05d}",
                shape=shape,
                color=color,
                position=position,
                image=draw_image(shape, color, position, rng),
                conversations=make_conversation(shape, color, position, rng),
            )
        )
    return samples


def default_splits(n_train: int = 480, n_held_out: int = 48, seed: int = 0) -> tuple[list[ShapeSample], list[ShapeSample]]:
    """Train and held-out samples: different seeds, so held-out pictures are never seen in training."""
    return build_samples(n_train, seed=seed, prefix="train"), build_samples(n_held_out, seed=seed + 10_000, prefix="heldout")


def write_dataset(samples: Sequence[ShapeSample], out_dir: str | Path, json_name: str = "data.json") -> Path:
    """Write ``out_dir/json_name`` (LLaVA format) and ``out_dir/images/<id>.png``; returns the JSON path."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        write_png(image_dir / sample.image_file, sample.image)
    json_path = out_dir / json_name
    json_path.write_text(json.dumps([s.record() for s in samples], indent=1))
    return json_path


def read_dataset(json_path: str | Path, image_folder: str | Path | None = None) -> list[dict[str, Any]]:
    """LLaVA JSON records with their picture loaded under ``"pixels"`` ((H, W, 3) uint8) when the file exists."""
    json_path = Path(json_path)
    folder = Path(image_folder) if image_folder else json_path.parent / "images"
    records = json.loads(json_path.read_text())
    for record in records:
        image = record.get("image")
        if image and (folder / image).is_file():
            record["pixels"] = read_png(folder / image)
    return records


def render_segments(conversations: Sequence[dict[str, str]], *, add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """The template as (text, supervised) segments; the system prompt opens the first user turn.

    With ``add_generation_prompt`` a trailing human turn is rendered up to ``ASSISTANT:``.
    """
    segments: list[tuple[str, bool]] = []
    for index, turn in enumerate(conversations):
        if turn["from"] == "human":
            opener = f"{SYSTEM_PROMPT} USER: " if index == 0 else "USER: "
            segments.append((f"{opener}{turn['value']} ASSISTANT:", False))
        else:
            segments.append((f" {turn['value']}{EOS}", True))
    if conversations and conversations[-1]["from"] == "human" and not add_generation_prompt:
        raise ValueError("the conversation ends with a human turn; pass add_generation_prompt=True to render a prompt")
    return segments


def encode_segments(tokenizer, segments: Sequence[tuple[str, bool]], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """BOS + each segment tokenized alone; labels copy the ids of supervised segments, -100 elsewhere."""
    input_ids = [tokenizer.bos_token_id]
    labels = [IGNORE_INDEX]
    for text, supervised in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels


def prompt_ids(tokenizer, question: str, *, with_image: bool = True) -> list[int]:
    """Token ids of a one-question prompt ending in ``ASSISTANT:``, ready for generation."""
    value = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image and IMAGE_PLACEHOLDER not in question else question
    ids, _ = encode_segments(tokenizer, render_segments([{"from": "human", "value": value}], add_generation_prompt=True))
    return ids


def image_to_tensor(image: np.ndarray):
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1] (CLIP-style mean/std 0.5)."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1).contiguous()


class ConversationDataset:
    """A torch-style dataset of {input_ids, labels, image} built from samples or LLaVA records."""

    def __init__(self, samples: Sequence[ShapeSample | dict], tokenizer, max_length: int = 128):
        self.samples = list(samples)
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        sample = self.samples[index]
        if isinstance(sample, ShapeSample):
            conversations, pixels = sample.conversations, sample.image
        else:
            conversations, pixels = sample["conversations"], sample.get("pixels")
        input_ids, labels = encode_segments(self.tokenizer, render_segments(conversations), self.max_length)
        item = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        item["image"] = image_to_tensor(pixels) if pixels is not None else torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)
        return item


def collate(batch: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad ids with `pad_token_id`, labels with -100; attention_mask marks real tokens."""
    import torch

    longest = max(item["input_ids"].numel() for item in batch)
    input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, item in enumerate(batch):
        length = item["input_ids"].numel()
        input_ids[row, :length] = item["input_ids"]
        labels[row, :length] = item["labels"]
        attention_mask[row, :length] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "images": torch.stack([item["image"] for item in batch]),
    }


def corpus_lines(samples: Sequence[ShapeSample]) -> list[str]:
    """Every rendered conversation as plain text, special tokens left out (the tokenizer's training corpus)."""
    return [
        "".join(text for text, _ in render_segments(s.conversations)).replace(EOS, " ").replace(IMAGE_PLACEHOLDER, " ")
        for s in samples
    ]
