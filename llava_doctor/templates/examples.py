"""Tiny in-memory tokenizers and datasets for the LD10x checks' own examples (no files, no hub)."""
from __future__ import annotations

import re
from typing import Any

_WORDS = (
    "a chat between curious user and an artificial intelligence assistant the gives helpful detailed polite "
    "answers to user's questions human's human USER ASSISTANT what is this it cat dog color black white yes no "
    "describe image picture red blue two one in on of"
).split()
_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(*, bos: bool = True, legacy: bool | None = True, max_length: int = 2048) -> Any:
    """A word-level fast tokenizer: one token per word or punctuation run, `<s>` prepended when `bos`."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from .conversation import TEMPLATES

    texts = [" ".join(_WORDS), ". , ? ! : ' < > / | ; - ( ) [INST] [/INST] <<SYS>> <</SYS>>"] + [t.system + " " + " ".join(t.roles) for t in TEMPLATES.values()]
    found = {w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text)}
    words = sorted(found | {" " + w for w in found} | {" ", "\n"})
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # A word or punctuation run takes the space before it, and a space with nothing after it is a
    # token of its own, as with SentencePiece (LLaVA's "- 2" counts on that trailing token).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?\w+| ?[^\w\s]+|\s"), behavior="isolated")
    core.add_special_tokens(_SPECIALS)
    if bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>" if bos else None, eos_token="</s>",
                                  unk_token="<unk>", model_max_length=max_length)
    if legacy is not None:
        tok.legacy = legacy
    return tok


def conversation(*answers: str, question: str = "what is this ?", image: bool = True) -> list[dict]:
    turns = []
    for k, answer in enumerate(answers):
        value = ("<image>\n" if image and k == 0 else "") + question
        turns += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return turns


def dataset(records: list[dict], template: str = "v1", *, recipe: str = "llava", tokenizer: Any = None,
            **options: Any) -> Any:
    from ..artifacts.dataset import build_dataset

    return build_dataset("example.json", records, tokenizer if tokenizer is not None else tiny_tokenizer(),
                         template, recipe=recipe, **options)


def record(sample_id: str, *answers: str, image: bool = True, **extra: Any) -> dict:
    out = {"id": sample_id, "conversations": conversation(*answers, image=image)}
    if image:
        out["image"] = f"{sample_id}.jpg"
    out.update(extra)
    return out
