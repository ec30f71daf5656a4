"""What a codebase's ``train.py`` does around ``preprocess``: how it loads the tokenizer, what its
``--version`` set-up makes of the pad token and the conversation template, which records its dataset
treats as multimodal, and what ``preprocess_multimodal`` does to the text.

Each function re-expresses the public source of one of the codebases (never copied):
- ``llava``: haotian-liu/LLaVA main (c121f04); ``llava-1.5``: the same repository before 879ef31;
- ``llava-next``: LLaVA-VL/LLaVA-NeXT main (df17966).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..findings import one_line
from .conversation import IMAGE_TOKEN, TEMPLATES, Template, get_template

CODEBASES = ("llava-1.5", "llava", "llava-next")
IM_START, IM_END, IM_PATCH = "<im_start>", "<im_end>", "<im_patch>"
# --version values train.py handles itself instead of looking them up in conv_templates
SETUP_VERSIONS = ("v0", "v0.5")


def check_codebase(codebase: str) -> str:
    if codebase not in CODEBASES:
        raise KeyError(f"unknown recipe {codebase!r}; known: {', '.join(CODEBASES)}")
    return codebase


# --- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerLoading:
    """The ``AutoTokenizer.from_pretrained`` call train.py makes for a model path."""

    use_fast: bool | None  # None: AutoTokenizer's default (the fast class when there is one)
    padding_side: str
    crash: str | None = None  # train.py raises before it reads a sample
    rule: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"padding_side": self.padding_side}
        if self.use_fast is not None:
            out["use_fast"] = self.use_fast
        return out


_NEXT_SLOW = ("wizardlm-2", "vicuna", "llama", "yi")


def tokenizer_loading(codebase: str, model_path: str) -> TokenizerLoading:
    """LLaVA loads ``use_fast=False`` (the SentencePiece class under transformers 4) unless 'mpt' is in
    the model path. LLaVA-NeXT picks by lower-cased name: mistral/mixtral/zephyr (default, left
    padding), qwen (default), wizardlm-2/vicuna/llama/yi (``use_fast=False``); for any other name no
    branch runs and the later ``tokenizer.pad_token`` raises UnboundLocalError."""
    check_codebase(codebase)
    if codebase != "llava-next":
        if "mpt" in model_path:
            return TokenizerLoading(None, "right", rule="'mpt' in the model path: the default (fast) class")
        return TokenizerLoading(False, "right", rule="use_fast=False (the slow SentencePiece class where one exists)")
    name = model_path.lower()
    if any(k in name for k in ("mistral", "mixtral", "zephyr")):
        return TokenizerLoading(None, "left", rule="mistral/mixtral/zephyr in the name: default class, left padding")
    if "qwen" in name:
        return TokenizerLoading(None, "right", rule="qwen in the name: default class")
    if any(k in name for k in _NEXT_SLOW) or ("nous-hermes" in name and "wizard-2" in name):
        return TokenizerLoading(False, "right", rule="vicuna/llama/yi in the name: use_fast=False")
    return TokenizerLoading(
        None, "right",
        crash="UnboundLocalError: cannot access local variable 'tokenizer' where it is not associated with a value",
        rule=f"no loading branch of LLaVA-NeXT's train.py matches the model path {model_path!r}",
    )


# --- the --version set-up -----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def templates_of(codebase: str) -> dict[str, Template]:
    """The codebase's ``conv_templates`` (names it defines itself). Shared: do not modify."""
    check_codebase(codebase)
    return {name: t for name, t in TEMPLATES.items() if codebase in t.codebases}


def default_conversation(codebase: str) -> Template:
    """``conversation_lib.default_conversation`` before train.py changes it."""
    return get_template("v0" if codebase == "llava-next" else "vicuna_v1")


@dataclass(frozen=True)
class TemplateChoice:
    """What ``--version NAME`` makes train.py use."""

    requested: str
    template: Template
    note: str | None = None  # set when the run does not use the template of that name

    @property
    def silent_fallback(self) -> bool:
        return self.note is not None and self.requested not in SETUP_VERSIONS


def resolve_template(codebase: str, name: str) -> tuple[Template, str | None]:
    """(the conversation train.py really uses for ``--version name``, a note when it is not that template)."""
    choice = choose_template(codebase, name)
    return choice.template, choice.note


@functools.lru_cache(maxsize=None)
def choose_template(codebase: str, name: str) -> TemplateChoice:
    check_codebase(codebase)
    if name in SETUP_VERSIONS:
        used = default_conversation(codebase)
        if codebase == "llava-next" and name == "v0":
            return TemplateChoice(name, used)
        return TemplateChoice(name, used, f"--version {name} keeps {codebase}'s default conversation ({used.name})")
    table = templates_of(codebase)
    if name in table:
        return TemplateChoice(name, table[name])
    fallback = get_template("vicuna_v1")
    where = sorted(c for c in CODEBASES if name in templates_of(c))
    defined = f" (only {', '.join(where)} define{'s' if len(where) == 1 else ''} it)" if where else ""
    return TemplateChoice(
        name, fallback,
        f"{codebase} has no template {name!r}{defined}: its train.py silently trains with vicuna_v1 "
        f"(preprocess_v1) instead, while its inference and eval scripts (conv_templates[{name!r}]) raise KeyError",
    )


def pad_decision(tokenizer: Any, codebase: str, version: str, pad_token: str | None = None) -> tuple[str, Any]:
    """What train.py does to the pad token: ("add", "[PAD]") or ("set", value); `pad_token` is the
    pad the user's run sets afterwards."""
    if pad_token is not None:
        return ("set", pad_token)
    if version == "v0":
        return ("add", "[PAD]") if tokenizer.pad_token is None else ("set", tokenizer.pad_token)
    if version == "v0.5" or codebase != "llava-next" or tokenizer.unk_token is not None:
        return ("set", tokenizer.unk_token)
    return ("set", tokenizer.pad_token)


def vision_tokens(mm_use_im_start_end: bool, mm_use_im_patch_token: bool) -> list[str]:
    """Tokens ``initialize_vision_tokenizer`` adds (``add_tokens(..., special_tokens=True)``), in order."""
    return ([IM_PATCH] if mm_use_im_patch_token else []) + ([IM_START, IM_END] if mm_use_im_start_end else [])


# --- the dataset's view of a record --------------------------------------------------------------


def multimodal_keys(codebase: str) -> tuple[str, ...]:
    """Record keys that make ``_get_item`` call preprocess_multimodal and pass has_image=True."""
    return ("image", "video") if codebase == "llava-next" else ("image",)


_NOISE = "QA_GT_caption_based_noisy"  # LLaVA-NeXT strips this string from every multimodal sentence


def preprocess_multimodal(conversation: Sequence[dict], codebase: str, version: str, *,
                          mm_use_im_start_end: bool = False) -> list[tuple[Any, str]]:
    """(from, value) pairs after ``preprocess_multimodal`` (run only for multimodal records).

    LLaVA moves every ``<image>`` of a sentence (human or gpt) to its front, merging several into one;
    LLaVA-NeXT moves it only when the sentence holds exactly one that is not already at the front.
    ``mmtag`` versions wrap it as ``<Image><image></Image>`` (LLaVA-NeXT only when it moved it);
    ``mm_use_im_start_end`` surrounds it with ``<im_start>``/``<im_end>``."""
    mmtag = "mmtag" in version
    pairs = []
    for turn in conversation:
        value = str(turn.get("value", ""))
        if codebase == "llava-next":
            if value.count(IMAGE_TOKEN) == 1 and not value.startswith(IMAGE_TOKEN):
                value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
                if mmtag:
                    value = value.replace(IMAGE_TOKEN, "<Image>" + IMAGE_TOKEN + "</Image>")
        elif IMAGE_TOKEN in value:
            value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
            if mmtag:
                value = value.replace(IMAGE_TOKEN, "<Image>" + IMAGE_TOKEN + "</Image>")
        if mm_use_im_start_end:
            value = value.replace(IMAGE_TOKEN, IM_START + IMAGE_TOKEN + IM_END)
        if codebase == "llava-next":
            value = value.replace(_NOISE, "")
        pairs.append((turn.get("from"), value))
    return pairs


def plain_pairs(conversation: Sequence[dict]) -> list[tuple[Any, str]]:
    return [(turn.get("from"), str(turn.get("value", ""))) for turn in conversation]


# --- what the environment's tokenizer API does ------------------------------------------------------

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_template_ids_problem(tokenizer: Any, chat_template: str | None = None) -> str | None:
    """None when ``apply_chat_template(messages)`` returns a list of ids, as LLaVA-NeXT's per-turn
    recipes assume (transformers 4); otherwise the exception their ``torch.tensor(input_ids)`` raises
    (transformers 5 returns a BatchEncoding, and ``list += BatchEncoding`` appends its key names)."""
    try:
        out = tokenizer.apply_chat_template([{"role": "system", "content": "x"}], chat_template=chat_template)
    except Exception as exc:  # the training code makes the same call
        return f"{type(exc).__name__} in apply_chat_template: {one_line(exc, 160)}"
    if isinstance(out, list) and all(isinstance(i, int) for i in out):
        return None
    if hasattr(out, "keys"):
        return ("ValueError: too many dimensions 'str' (apply_chat_template returns a BatchEncoding in this transformers "
                f"version; `input_id += ...` appends its keys {list(out.keys())} and torch.tensor fails)")
    return f"TypeError: apply_chat_template returned a {type(out).__name__}, not a list of ids"


_LEGACY_TOKENIZERS = re.compile(r"^(\d+)\.(\d+)")


@functools.lru_cache(maxsize=1)
def tokenizers_at_least_0_14() -> bool:
    """LLaVA's IS_TOKENIZER_GREATER_THAN_0_14 (read from the installed `tokenizers`)."""
    import tokenizers

    found = _LEGACY_TOKENIZERS.match(tokenizers.__version__)
    return found is not None and (int(found.group(1)), int(found.group(2))) >= (0, 14)
