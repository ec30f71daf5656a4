"""The small BPE tokenizer the project ships for its bundled model (no hub, no download).

Llama-like: a SentencePiece-style ``Metaspace`` pre-tokenizer (``▁`` marks a word start), BPE
merges learnt from the embedded dataset's text, ``<s>`` prepended by the post-processor, and
the specials ``<unk>`` ``<s>`` ``</s>`` ``<pad>`` ``<image>`` at ids 0-4.

The files live in ``fixtures/tokenizer/``; the top-level ``fixtures/`` folder ships inside the
package as ``llava_doctor.fixtures`` (like ``checks/``), so a checkout and a wheel read the same
files. ``fixtures/build_tokenizer.py`` writes them and a test keeps them reproducible.
"""
from __future__ import annotations

import itertools
import json
from importlib import resources
from pathlib import Path

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
VOCAB_SIZE = 320
ASSET_DIR = Path(str(resources.files("llava_doctor.fixtures") / "tokenizer"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_corpus() -> list[str]:
    """Rendered conversations of a fixed sample set plus every question/answer for every combination."""
    from .data import QUESTIONS, SYSTEM_PROMPT, build_samples, corpus_lines
    from .images import COLORS, POSITIONS, SHAPES

    lines = corpus_lines(build_samples(200, seed=0, prefix="tok"))
    for (shape, color, position), (question, answer) in itertools.product(
        itertools.product(SHAPES, COLORS, POSITIONS), QUESTIONS.values()
    ):
        lines.append(f"{SYSTEM_PROMPT} USER: {question} ASSISTANT: {answer.format(shape=shape, color=color, position=position)}")
    return lines


def train_tokenizer(lines: list[str], vocab_size: int = VOCAB_SIZE):
    """A `tokenizers.Tokenizer` (BPE + Metaspace, BOS post-processor) trained on `lines`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = metaspace(pre_tokenizers)
    tokenizer.decoder = metaspace(decoders)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False, min_frequency=1
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tokenizer


def metaspace(kind):
    """``kind.Metaspace`` (``tokenizers.pre_tokenizers`` or ``tokenizers.decoders``) with ``▁`` and
    ``prepend_scheme="first"`` on every ``tokenizers`` release: 0.15 (LLaVA's pin) serialises the field but
    its constructor takes only ``add_prefix_space``, so there it is set through the serialised state."""
    try:
        return kind.Metaspace(replacement="▁", prepend_scheme="first")
    except TypeError:
        node = kind.Metaspace(replacement="▁", add_prefix_space=True)
        node.__setstate__(json.dumps({"type": "Metaspace", "replacement": "▁", "add_prefix_space": True,
                                      "prepend_scheme": "first"}).encode())
        return node


def portable_tokenizer_json(data: dict) -> dict:
    """The same tokenizer in the serialisation every `tokenizers` release since 0.15 reads (LLaVA pins 0.15.1):
    Metaspace with `add_prefix_space` beside `prepend_scheme` and without 0.19's `split` (True, the old
    behaviour, is its default), BPE merges as "a b" strings (0.20+ writes pairs; it reads both)."""
    for key in ("pre_tokenizer", "decoder"):
        node = data.get(key) or {}
        if node.get("type") == "Metaspace":
            data[key] = {"type": "Metaspace", "replacement": node["replacement"], "add_prefix_space": True,
                         "prepend_scheme": node.get("prepend_scheme", "always")}
    model = data.get("model") or {}
    model["merges"] = [" ".join(pair) if isinstance(pair, list) else pair for pair in model.get("merges", [])]
    for legacy_unknown in ("ignore_merges",):  # a 0.19 field 0.15 rejects; False is the old behaviour
        if model.get(legacy_unknown) is False:
            model.pop(legacy_unknown)
    return data


def write_tokenizer(out_dir: str | Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train on the embedded corpus and save tokenizer.json + tokenizer_config.json + special_tokens_map.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tokenizer_corpus(), vocab_size)
    portable = portable_tokenizer_json(json.loads(tokenizer.to_str()))
    (out_dir / "tokenizer.json").write_text(json.dumps(portable, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "additional_special_tokens": ["<image>"],
        "model_max_length": 256,
        "padding_side": "right",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special_map = {**specials, "additional_special_tokens": ["<image>"]}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, sort_keys=True) + "\n")
    return out_dir


def tokenizer_dir() -> Path:
    """The shipped tokenizer folder (package data; works from a checkout and from a wheel)."""
    if not (ASSET_DIR / "tokenizer.json").is_file():
        from .. import findings

        raise findings.InputError(
            f"the bundled tokenizer is missing from {ASSET_DIR}; regenerate it with `python fixtures/build_tokenizer.py`"
        )
    return ASSET_DIR


def load_tokenizer(path: str | Path | None = None):
    """The bundled tokenizer (or the one at `path`) as a transformers fast tokenizer, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or tokenizer_dir()), local_files_only=True)
