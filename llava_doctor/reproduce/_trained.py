"""A briefly trained, healthy tiny LLaVA for the scenarios that need one that answers sensibly.

Training it takes longer than a scenario may (30 s on 2 CPU cores), so its weights are cached
after the first build, keyed by a fingerprint of everything that decides them: the training
recipe, the tokenizer file, the model config and the source of the core modules. The cache lives
in ``$LLAVA_DOCTOR_CACHE`` (default ``$XDG_CACHE_HOME/llava-doctor`` or ``~/.cache/llava-doctor``);
a stale or corrupt entry is simply rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._common import tiny_model, tokenizer

CORE_SOURCES = ("configs.py", "data.py", "images.py", "model.py", "projector.py", "stages.py", "train.py", "vision.py")


def healthy_recipe():
    """The training recipe of the healthy model (the core's own default unless it names a better one)."""
    from ..core import train

    return getattr(train, "HEALTHY_CONFIG", None) or train.TrainConfig(steps=200)


def cache_dir() -> Path:
    from ..core.configs import cache_root

    return cache_root()


def fingerprint(model, recipe) -> str:
    from ..core import tokenizer as core_tokenizer

    core = Path(core_tokenizer.__file__).resolve().parent
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(recipe), sort_keys=True).encode())
    config = {k: v for k, v in model.config.to_dict().items() if k != "mm_vision_tower"}
    config["tower"] = Path(model.config.mm_vision_tower).name  # names the tower's seed and pretraining
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update((core_tokenizer.tokenizer_dir() / "tokenizer.json").read_bytes())
    for name in CORE_SOURCES:
        path = core / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


def held_out_sample(index: int = 0):
    """A held-out picture (never seen in training) and its truth."""
    from ..core.data import default_splits

    return default_splits()[1][index]


def trained_model(out: Path) -> tuple[Any, Any]:
    """(model, tokenizer): the healthy model on the base tower in ``out/towers``, from the cache or trained now."""
    from safetensors.torch import load_file, save_file

    from ..core.data import ConversationDataset, default_splits
    from ..core.stages import apply_stage
    from ..core.train import train

    tok = tokenizer()
    model = tiny_model(out, pretrained_tower=True)
    recipe = healthy_recipe()
    path = cache_dir() / f"healthy-{fingerprint(model, recipe)}.safetensors"
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)), strict=True)
            return model.eval(), tok
        except Exception:  # stale or truncated: rebuild below
            path.unlink(missing_ok=True)
    train(apply_stage(model, "finetune"), ConversationDataset(default_splits()[0], tok), recipe)
    model.requires_grad_(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(partial))
    os.replace(partial, path)
    return model.eval(), tok

