"""Which training code a launch runs: LLaVA or LLaVA-NeXT, the checkout on disk, and what its train.py does.

Told, in order, by ``--codebase``; by the user's own ``train.py`` when the launched script's checkout
is on disk (LLaVA-NeXT's defines ``mm_tunable_parts``); by flags only one codebase defines; by the
path. The checkout, when present, also answers what the tables cannot: its exact argument
dataclasses, whether it has LLaVA-NeXT commit bfbba5a (LoRA + ``mm_tunable_parts`` no longer
unfreezes the whole LLM, LLaVA-VL/LLaVA-NeXT#508), and whether LLaVA's ``preprocess_v1`` has the
tokenizers>=0.14 corrections of commit 879ef31 (the ``llava`` recipe) or not (``llava-1.5``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

from ..findings import InputError
from .arguments import BUILTIN_ARGS, BUILTIN_SOURCE, CODEBASES, ArgSpec, codebase_only_flags, train_py_fields

MAX_TRAIN_PY_BYTES = 4 * 1024 * 1024
NEXT_PATH = re.compile(r"llava[-_]?next|onevision", re.I)


@dataclass(frozen=True)
class Codebase:
    name: str  # llava | llava-next
    reason: str  # how it was told, for the report
    fields: tuple[ArgSpec, ...]  # ModelArguments + DataArguments + TrainingArguments fields it adds
    fields_source: str
    recipe: str  # the templates.recipes codebase whose label arithmetic the run uses
    train_py: str | None = None  # the user's train.py, when on disk
    lora_fix: bool | None = None  # LLaVA-NeXT: bfbba5a present (None: not known)


def find_train_py(script_path: str | None) -> str | None:
    """The train.py beside the launched script (train_mem.py imports it), if it is a regular file."""
    if not script_path:
        return None
    directory = os.path.dirname(script_path)
    for candidate in (script_path, os.path.join(directory, "train.py")):
        if os.path.basename(candidate) == "train.py" and os.path.isfile(candidate):
            return candidate
    return None


def has_lora_tunable_fix(source: str) -> bool:
    """LLaVA-NeXT after bfbba5a: the `mm_language_model` branch asks `lora_enable` before unfreezing the LLM."""
    lines = source.splitlines()
    for k, line in enumerate(lines):
        if re.search(r"""["']mm_language_model["']\s+in\s+tunable_parts""", line):
            if any("lora_enable" in later for later in lines[k + 1:k + 6]):
                return True
    return False


def identify(*, explicit: str | None, script_path: str | None, given: Iterable[str],
             hints: Iterable[str] = ()) -> Codebase:
    """The codebase of a launch. `given`: option names as written; `hints`: paths and ids seen in it."""
    if explicit is not None and explicit not in CODEBASES:
        raise InputError(f"unknown codebase {explicit!r}; known: {', '.join(CODEBASES)}")
    train_py = find_train_py(script_path)
    source = None
    if train_py:
        from ..files import read_text

        source = read_text(train_py, limit=MAX_TRAIN_PY_BYTES, what="train.py")
    if explicit:
        name, reason = explicit, "--codebase"
    elif source is not None:
        name = "llava-next" if "mm_tunable_parts" in source else "llava"
        reason = f"read {train_py}"
    else:
        only = codebase_only_flags()
        names = [g.lstrip("-").split("=", 1)[0].replace("-", "_") for g in given]
        marked = sorted({only[n] for n in names if n in only})
        if len(marked) == 1:
            flag = next(n for n in names if only.get(n) == marked[0])
            name, reason = marked[0], f"--{flag} exists only in {marked[0]}'s train.py"
        elif any(NEXT_PATH.search(h or "") for h in [script_path or "", *hints]):
            name, reason = "llava-next", "a LLaVA-NeXT path in the launch"
        else:
            name, reason = "llava", "assumed: no LLaVA-NeXT-only flag and no checkout on disk (say --codebase llava-next otherwise)"
    fields = train_py_fields(source) if source is not None else None
    fields_source = f"{train_py}" if fields else BUILTIN_SOURCE[name]
    if not fields:
        fields = BUILTIN_ARGS[name]
    recipe = name
    if name == "llava" and source is not None and "IS_TOKENIZER_GREATER_THAN_0_14" not in source:
        recipe = "llava-1.5"
    lora_fix = has_lora_tunable_fix(source) if name == "llava-next" and source is not None else None
    return Codebase(name, reason, tuple(fields), fields_source, recipe, train_py, lora_fix)
