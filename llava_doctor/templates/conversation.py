"""Conversation templates of LLaVA-family training code, as data, with a renderer and a parser.

Each template is described by the same fields the training code keys on (system prompt, roles,
separator style, separators, version) so that rendering produces the exact text the training code
tokenizes. Rendering also records where every message and every expected end-of-turn text sits in
the rendered string: the oracle turns those character spans into labels.

The names are the ones users pass as ``--version`` to LLaVA / LLaVA-NeXT training scripts.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple, Sequence

IMAGE_TOKEN = "<image>"
HUMAN, GPT = 0, 1


class SepStyle(str, enum.Enum):
    SINGLE = "single"
    TWO = "two"
    MPT = "mpt"
    PLAIN = "plain"
    LLAMA_2 = "llama_2"
    CHATML = "chatml"
    LLAMA_3 = "llama_3"
    GEMMA = "gemma"


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str]
    sep_style: SepStyle
    sep: str
    sep2: str | None = None
    version: str = "Unknown"  # the training code dispatches its preprocess function on this
    stop_str: str | None = None
    # Codebases whose conversation table defines this name ("llava-1.5", "llava", "llava-next").
    codebases: frozenset[str] = frozenset({"llava-1.5", "llava", "llava-next"})

    @property
    def learned_end(self) -> str:
        """The text after an answer that the model should learn to produce (its end of turn)."""
        if self.sep_style is SepStyle.TWO:
            return self.sep2 or ""
        if self.sep_style is SepStyle.LLAMA_2:
            return " " + (self.sep2 or "")
        if self.sep_style in (SepStyle.CHATML, SepStyle.GEMMA):
            return self.sep.rstrip("\n")
        if self.sep_style is SepStyle.LLAMA_3:
            return "<|eot_id|>"
        return self.sep

    @property
    def separators(self) -> tuple[str, ...]:
        """Texts whose presence inside a message breaks the training code's split on them."""
        found = [s for s in (self.sep, self.sep2) if s and s.strip()]
        if self.sep_style is SepStyle.LLAMA_2:
            found += ["[/INST]", "[INST]"]
        if self.sep_style is SepStyle.TWO:
            found.append(f"{self.roles[GPT]}: ")
        if self.sep_style in (SepStyle.MPT, SepStyle.CHATML, SepStyle.GEMMA):
            found += [r.strip() for r in self.roles if r.strip()]
        if self.sep_style is SepStyle.LLAMA_3:
            found += ["<|start_header_id|>", "<|end_header_id|>"]
        return tuple(dict.fromkeys(found))


class Span(NamedTuple):
    """One message in rendered text: characters [start, end) plus its end-of-turn text [end, end_stop)."""

    turn: int
    role: int
    start: int
    end: int
    end_stop: int


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: tuple[Span, ...]

    def answers(self) -> list[Span]:
        return [s for s in self.spans if s.role == GPT]


_V1_SYSTEM_USER = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_V1_SYSTEM_HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_LLAVA_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user with a "
    "variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
_NEXT = frozenset({"llava-next"})
_HAOTIAN = frozenset({"llava-1.5", "llava"})


def _templates() -> dict[str, Template]:
    vicuna_v0 = Template("v0", _V1_SYSTEM_HUMAN, ("Human", "Assistant"), SepStyle.SINGLE, "###")
    vicuna_v1 = Template("v1", _V1_SYSTEM_USER, ("USER", "ASSISTANT"), SepStyle.TWO, " ", "</s>", "v1")
    llava_v1 = Template("llava_v1", _V1_SYSTEM_HUMAN, ("USER", "ASSISTANT"), SepStyle.TWO, " ", "</s>", "v1")
    llama_2 = Template("llama_2", _LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), SepStyle.LLAMA_2, "<s>", "</s>", "llama_v2")
    llava_llama_2 = Template(
        "llava_llama_2", _LLAVA_SYSTEM, ("USER", "ASSISTANT"), SepStyle.LLAMA_2, "<s>", "</s>", "llama_v2"
    )
    mistral_instruct = Template(
        "mistral_instruct", "", ("USER", "ASSISTANT"), SepStyle.LLAMA_2, "", "</s>", "llama_v2"
    )
    mpt = Template(
        "mpt",
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
        "The assistant gives helpful and honest answers.",
        _CHATML_ROLES,
        SepStyle.MPT,
        "<|im_end|>",
        version="mpt",
    )
    chatml_direct = Template(
        "chatml_direct", "<|im_start|>system\nAnswer the questions.", _CHATML_ROLES, SepStyle.MPT, "<|im_end|>",
        version="mpt",
    )
    plain = Template("plain", "", ("", ""), SepStyle.PLAIN, "\n")
    llava_v0 = Template("llava_v0", _V1_SYSTEM_HUMAN, ("Human", "Assistant"), SepStyle.SINGLE, "###")
    qwen = Template(
        "qwen_1_5", "<|im_start|>system\nYou are a helpful assistant.", ("<|im_start|>user", "<|im_start|>assistant"),
        SepStyle.CHATML, "<|im_end|>", version="qwen", codebases=_NEXT,
    )
    qwen_2_5 = Template(
        "qwen_2_5", "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        ("<|im_start|>user", "<|im_start|>assistant"), SepStyle.CHATML, "<|im_end|>", version="qwen", codebases=_NEXT,
    )
    llava_llama_3 = Template(
        "llava_llama_3", _LLAVA_SYSTEM, ("user", "assistant"), SepStyle.LLAMA_3, "<|eot_id|>",
        version="llama_v3", codebases=_NEXT,
    )
    gemma = Template(
        "gemma_instruct", "", ("<start_of_turn>user\n", "<start_of_turn>model\n"), SepStyle.GEMMA,
        "<end_of_turn>\n", version="gemma", codebases=_NEXT,
    )
    v0_mmtag = Template("v0_mmtag", _MMTAG_SYSTEM, ("Human", "Assistant"), SepStyle.SINGLE, "###", version="v0_mmtag")
    v1_mmtag = Template("v1_mmtag", _MMTAG_SYSTEM, ("USER", "ASSISTANT"), SepStyle.TWO, " ", "</s>", "v1_mmtag")
    llava_llama_2_simple = Template(
        "llava_llama_2_simple", "Answer the questions about the visual content that the user provides.",
        ("USER", "ASSISTANT"), SepStyle.LLAMA_2, "<s>", "</s>", "llama_v2", codebases=_NEXT,
    )
    llava_llama_2_mmtag = Template(
        "llava_llama_2_mmtag", "Answer the questions about the visual content that the user provides."
        "The visual content will be provided with the following format: <Image>visual content</Image>.",
        ("USER", "ASSISTANT"), SepStyle.LLAMA_2, "<s>", "</s>", "llama_v2_mmtag", codebases=_NEXT,
    )
    mistral_orca = Template(
        "mistral_orca", "<|im_start|>system\nYou are MistralOrca, a large language model trained by Alignment Lab AI. "
        "Write out your reasoning step-by-step to be sure you get the right answers!", _CHATML_ROLES, SepStyle.MPT,
        "<|im_end|>", version="mpt", codebases=_NEXT,
    )
    mistral_zephyr = Template(
        "mistral_zephyr", "<|system|>\nYou are a helpful AI assistant.", ("<|user|>\n", "<|assistant|>\n"),
        SepStyle.MPT, "</s>", version="mpt", codebases=_NEXT,
    )
    table = {
        "default": vicuna_v0,
        "v0": vicuna_v0,
        "v1": vicuna_v1,
        "vicuna_v1": vicuna_v1,
        "llama_2": llama_2,
        "mistral_instruct": mistral_instruct,
        "llava_mistral_instruct": _renamed(mistral_instruct, codebases=_NEXT),
        "chatml_direct": chatml_direct,
        "mistral_direct": chatml_direct,
        "plain": plain,
        "v0_plain": plain,
        "llava_v0": llava_v0,
        "llava_v1": llava_v1,
        "llava_llama_2": llava_llama_2,
        "v0_mmtag": _renamed(v0_mmtag, codebases=_HAOTIAN),
        "v1_mmtag": _renamed(v1_mmtag, codebases=_HAOTIAN),
        "llava_v0_mmtag": _renamed(v0_mmtag, codebases=_NEXT),
        "llava_v1_mmtag": _renamed(v1_mmtag, codebases=_NEXT),
        "llava_llama_2_simple": llava_llama_2_simple,
        "llava_llama_2_mmtag": llava_llama_2_mmtag,
        "mistral_orca": mistral_orca,
        "mistral_zephyr": mistral_zephyr,
        "mpt": mpt,
        "qwen_1_5": qwen,
        "qwen_2": qwen,
        "qwen_2_5": qwen_2_5,
        "llava_llama_3": llava_llama_3,
        "gemma_instruct": gemma,
    }
    return {name: _renamed(t, name=name) for name, t in table.items()}


def _renamed(template: Template, **changes) -> Template:
    from dataclasses import replace

    return replace(template, **changes)


TEMPLATES: dict[str, Template] = _templates()


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None


def _turn_pieces(t: Template, i: int, role: int, message: str) -> tuple[str, str, str]:
    """(text before the message, the message as rendered, the text after it) for turn i."""
    name = t.roles[role]
    style = t.sep_style
    if style is SepStyle.SINGLE:
        return (name + ": ", message, t.sep) if message else (name + ":", "", "")
    if style is SepStyle.TWO:
        return (name + ": ", message, (t.sep, t.sep2 or "")[i % 2]) if message else (name + ":", "", "")
    if style in (SepStyle.MPT, SepStyle.GEMMA):
        return (name, message, t.sep) if message else (name, "", "")
    if style is SepStyle.CHATML:
        return (name + "\n", message, t.sep + "\n") if message else (name + "\n", "", "")
    if style is SepStyle.LLAMA_3:
        return (f"<|start_header_id|>{name}<|end_header_id|>\n\n", message.strip(), "<|eot_id|>")
    if style is SepStyle.PLAIN:
        return ("", message, t.sep) if message else ("", "", "")
    if style is SepStyle.LLAMA_2:
        if not message:
            return ("", "", "")
        if i % 2 == 0:
            system = f"<<SYS>>\n{t.system}\n<</SYS>>\n\n" if i == 0 and t.system else ""
            return ((t.sep if i else "") + "[INST] " + system, message, " [/INST]")
        return (" ", message, " " + (t.sep2 or ""))
    raise ValueError(f"unknown separator style {style}")


def _head(t: Template) -> str:
    if t.sep_style in (SepStyle.SINGLE, SepStyle.TWO, SepStyle.MPT):
        return t.system + t.sep
    if t.sep_style is SepStyle.CHATML:
        return "" if not t.system else t.system + t.sep + "\n"
    if t.sep_style is SepStyle.LLAMA_3:
        return f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{t.system.strip()}<|eot_id|>"
    if t.sep_style is SepStyle.PLAIN:
        return t.system
    return ""


def render(template: Template | str, messages: Sequence[str]) -> Rendered:
    """Render alternating human/assistant messages (human first) the way the training code does.

    PLAIN (pretraining) renders like LLaVA's ``preprocess_plain``: the human turn is replaced by the
    bare ``<image>`` and only the first exchange is used.
    """
    t = get_template(template) if isinstance(template, str) else template
    if t.sep_style is SepStyle.PLAIN:
        messages = [IMAGE_TOKEN, *messages[1:2]]
    parts = [_head(t)]
    pos = len(parts[0])
    spans = []
    learned_end = t.learned_end
    plain = t.sep_style is SepStyle.PLAIN
    for i, message in enumerate(messages):
        before, shown, after = _turn_pieces(t, i, i % 2, message)
        if plain and i == 0:
            after = ""
        start = pos + len(before)
        end = start + len(shown)
        learned = len(learned_end) if shown and after.startswith(learned_end) else 0
        spans.append(Span(i, i % 2, start, end, end + learned))
        parts.append(before + shown + after)
        pos += len(before) + len(shown) + len(after)
    return Rendered("".join(parts), tuple(spans))


class ParseError(ValueError):
    pass


def parse(template: Template | str, text: str) -> list[str]:
    """Rendered text -> messages (inverse of `render` for messages that contain no template text)."""
    t = get_template(template) if isinstance(template, str) else template
    head = _head(t)
    if not text.startswith(head):
        raise ParseError(f"text does not start with the {t.name} system header")
    pos, i, messages = len(head), 0, []
    while pos < len(text):
        before, _, after = _turn_pieces(t, i, i % 2, "x")
        if t.sep_style is SepStyle.PLAIN and i == 0:
            before, after = "", ""
            if not text.startswith(IMAGE_TOKEN, pos):
                raise ParseError("plain text does not start with <image>")
            messages.append(IMAGE_TOKEN)
            pos += len(IMAGE_TOKEN)
            i += 1
            continue
        if not text.startswith(before, pos):
            raise ParseError(f"turn {i}: expected {before!r} at character {pos}")
        start = pos + len(before)
        # The message ends where this turn's closing text meets the next turn's opening text (or
        # the end of the text): looking for the closing text alone would stop at a lone " " sep.
        next_before = _turn_pieces(t, i + 1, (i + 1) % 2, "x")[0]
        end = text.find(after + next_before, start)
        if end < 0 and text.endswith(after) and len(text) - len(after) >= start:
            end = len(text) - len(after)
        if end < 0:
            raise ParseError(f"turn {i}: no {after!r} after character {start}")
        messages.append(text[start:end])
        pos = end + len(after)
        i += 1
    return messages
