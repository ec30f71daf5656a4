"""The tokenizer a launch's train.py loads: the same class (slow or fast), padding side and length.

LLaVA: ``AutoTokenizer.from_pretrained(..., model_max_length=..., padding_side="right",
use_fast=False)`` except for MPT names (fast). LLaVA-NeXT decides by the name: Mistral / Mixtral /
Zephyr fast with padding on the left, Qwen fast on the right, Llama / Vicuna / Yi / WizardLM-2 slow on
the right. The slow and the fast tokenizer of a Llama differ in what the label arithmetic reads
(``legacy``), so the audit and the smoke step use the one the run will use. Loaded from the local
folder only; where this transformers has no slow class for it, the fast one is used and noted.
"""
from __future__ import annotations

import os
from typing import Any

from ..findings import InputError


def tokenizer_options(codebase: str, name: str) -> dict[str, Any]:
    low = name.lower()
    if codebase == "llava-next":
        if any(k in low for k in ("mistral", "mixtral", "zephyr")):
            return {"padding_side": "left"}
        if "qwen" in low:
            return {"padding_side": "right"}
        return {"padding_side": "right", "use_fast": False}
    return {"padding_side": "right"} if "mpt" in low else {"padding_side": "right", "use_fast": False}


def load_training_tokenizer(folder: str, codebase: str, name: str, model_max_length: int | None) -> tuple[Any, str | None]:
    """(tokenizer, note) as the codebase's train.py loads it; InputError when the folder has none."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from ..quiet import quiet_libraries

    options = tokenizer_options(codebase, name)
    if model_max_length:
        options["model_max_length"] = model_max_length
    note = None
    try:
        with quiet_libraries():
            try:
                return AutoTokenizer.from_pretrained(folder, local_files_only=True, **options), None
            except (ValueError, OSError, ImportError) as exc:
                if options.pop("use_fast", True) is not False:
                    raise
                note = f"the slow tokenizer train.py asks for cannot be loaded here ({type(exc).__name__}); used the fast one"
                return AutoTokenizer.from_pretrained(folder, local_files_only=True, **options), note
    except Exception as exc:  # transformers raises many kinds; all mean "unreadable"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{folder}: cannot load a tokenizer ({type(exc).__name__}: {first[:200]})") from None
