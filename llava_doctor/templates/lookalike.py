"""Text that looks like an image placeholder but is not one (or is one the user did not mean).

What the training code counts as an image is decided per codebase and per record: only ``<image>``
in a record with an image key (LLaVA-NeXT: or a video key) becomes IMAGE_TOKEN_INDEX, after
``preprocess_multimodal`` moved (and, in LLaVA, merged) it. Everything else that looks like a
placeholder is tokenized as plain text, or doubled by the run's own wrapping.
"""
from __future__ import annotations

from typing import Any

from .codebase import IM_END, IM_START, multimodal_keys, preprocess_multimodal
from .conversation import IMAGE_TOKEN, get_template
from .tokenize import IMAGE_TOKEN_INDEX

VIDEO_TOKEN = "<video>"


def placeholder_counts(sample: Any, codebase: str, result: Any, mm_use_im_start_end: bool = False) -> tuple[int, int]:
    """(``<image>`` occurrences in the record's text, placeholders the model sees after preprocessing)."""
    in_text = sum(str(t.get("value", "")).count(IMAGE_TOKEN) for t in sample.conversation)
    if not sample.multimodal(codebase):
        return in_text, 0
    if result is not None and not result.crash and result.input_ids:
        return in_text, result.input_ids.count(IMAGE_TOKEN_INDEX)
    version = get_template(result.template).version if result is not None and result.template else ""
    pairs = preprocess_multimodal(sample.conversation, codebase, version, mm_use_im_start_end=mm_use_im_start_end)
    return in_text, sum(value.count(IMAGE_TOKEN) for _, value in pairs)


def _as_text(tokenizer: Any, text: str) -> str:
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
    except Exception:
        return "as text"
    return f"as text ({len(ids)} token{'s' if len(ids) != 1 else ''}: {', '.join(repr(p) for p in pieces)})"


def lookalikes(sample: Any, codebase: str, template: str, tokenizer: Any, mm_use_im_start_end: bool = False) -> list[str]:
    """One sentence per kind of placeholder-like text in the sample (worded the same for every sample)."""
    values = [(str(t.get("from")), str(t.get("value", ""))) for t in sample.conversation]
    text = "".join(v for _, v in values)
    found: list[str] = []
    multimodal = sample.multimodal(codebase)
    if IMAGE_TOKEN in text and not multimodal:
        keys = " or ".join(repr(k) for k in multimodal_keys(codebase))
        found.append(f"`<image>` in a record without an {keys} key: {codebase} does not run preprocess_multimodal on "
                     f"it and tokenizes it {_as_text(tokenizer, IMAGE_TOKEN)}; the model gets no image")
    if VIDEO_TOKEN in text:
        unused = ("; this video record has no `<image>`, so its frames are never used"
                  if codebase == "llava-next" and sample.has_video_key and IMAGE_TOKEN not in text else "")
        found.append(f"`<video>` is not a placeholder in {codebase} (only `<image>` is): it is tokenized "
                     f"{_as_text(tokenizer, VIDEO_TOKEN)}{unused}")
    if multimodal and any(role == "gpt" and IMAGE_TOKEN in v for role, v in values):
        found.append(f"`<image>` in an answer: {codebase} keeps it as an image position inside the text the model "
                     "learns to produce")
    if IM_START in text or IM_END in text:
        if mm_use_im_start_end:
            found.append("typed `<im_start>`/`<im_end>` are the tokens mm_use_im_start_end adds: preprocess_multimodal "
                         "wraps `<image>` in another pair, so they are doubled")
        else:
            found.append(f"typed `<im_start>`/`<im_end>` are plain text without mm_use_im_start_end (`<im_start>` is "
                         f"tokenized {_as_text(tokenizer, IM_START)})")
    if "<Image>" in text and multimodal:
        version = get_template(template).version if template else ""
        if "mmtag" in version:
            found.append("typed `<Image>`/`</Image>`: this mmtag version wraps `<image>` in them itself, so they are "
                         "doubled")
    return found
