"""What the scenarios share: the tiny model on a base tower inside the output folder, data, quiet logs."""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

TOWERS = "towers"  # the base vision tower(s) a scenario's config.json points at (mm_vision_tower)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' progress bars/load reports and DeepSpeed's banner while a scenario builds
    (the libraries' state is restored afterwards; llava-doctor's own warnings stay visible)."""
    from ..quiet import quiet_libraries

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with quiet_libraries():
        yield


def tiny_model(out: Path, *, seed: int = 0, pretrained_tower: bool = False, **config_kwargs: Any):
    """The bundled tiny LLaVA (Llama + CLIP) whose base tower is a copy in ``out/towers`` (mm_vision_tower).

    `pretrained_tower` uses the core's briefly pretrained tower (built once into the cache, ~10 s) that a
    model needs to learn to see; otherwise a seeded random tower (milliseconds) is enough.
    """
    from ..core.configs import DEFAULT_PRETRAIN_STEPS, prepare_vision_tower
    from ..core.model import build_tiny_model

    steps = DEFAULT_PRETRAIN_STEPS if pretrained_tower else 0
    if steps:
        cached = prepare_vision_tower(None, "clip", pretrain_steps=steps)
        local = out / TOWERS / cached.name
        if not (local / "model.safetensors").is_file():
            shutil.copytree(cached, local, dirs_exist_ok=True)
    return build_tiny_model(out / TOWERS, seed=seed, pretrain_steps=steps, **config_kwargs)


def tokenizer():
    from ..core.tokenizer import load_tokenizer

    return load_tokenizer()


def shapes_dataset(tok, count: int = 64, seed: int = 0):
    from ..core.data import ConversationDataset, build_samples

    return ConversationDataset(build_samples(count, seed=seed), tok)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: non-finite numbers are written as null (and named so in the facts)."""
    return value if math.isfinite(value) else None


def first_line(text: str, limit: int = 240) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
