"""The label-masking arithmetic of LLaVA-family training code, per separator style and codebase.

A recipe predicts, for one conversation and the user's real tokenizer, what the training code's
``preprocess`` returns: input ids, labels, whether it prints ``WARNING: tokenization mismatch: X vs. Y``
(and then masks every label), the per-round lengths it summed, or where it would raise instead.
It follows the environment it runs in: the tokenizer object's own behaviour (its class, ``legacy``,
what ``apply_chat_template`` returns, whether ``additional_special_tokens_ids`` exists) and the
installed ``tokenizers`` version decide, as they decide for the training code.

Codebases modelled (read from their public source, re-expressed here; see `codebase`):
- ``llava-1.5``: haotian-liu/LLaVA at the v1.5 release (before commit 879ef31): no ``legacy``
  corrections; ``preprocess_mpt`` always uses ``tokenizer_image_token`` and adds the separator's
  length to every round.
- ``llava``: LLaVA's main branch: ``preprocess_v1`` subtracts 1 from rounds after the first when
  ``not tokenizer.legacy`` and tokenizers >= 0.14; ``preprocess_mpt`` adds 1 when ``legacy``.
- ``llava-next``: LLaVA-NeXT: the same functions (``preprocess_mpt`` starts counting at 1), plus
  ``preprocess_qwen`` / ``preprocess_llama3`` (per-turn chat templates, fixed unmask ids, no
  mismatch check) and ``preprocess_gemma``.

Lengths of rounds and instructions come from `PromptTokens` (derived from the prompt's own
tokenization where exact, see `tokenize`); labels are masked with slices, never per token.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from .codebase import (
    CODEBASES, QWEN_CHAT_TEMPLATE, chat_template_ids_problem, check_codebase, choose_template, pad_decision,
    plain_pairs, preprocess_multimodal, resolve_template, tokenizers_at_least_0_14, vision_tokens,
)
from .conversation import IMAGE_TOKEN, SepStyle, Template, render
from .tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoder, PromptTokens, positions

__all__ = [
    "CODEBASES", "Facts", "MISSING", "Recipe", "RecipeResult", "Round", "TrainingCodeCrash", "get_recipe",
    "pad_decision", "resolve_template", "setup_tokenizer", "shared_setup", "tokenizers_at_least_0_14",
]
ROLE_KEYS = ("human", "gpt")


@dataclass(slots=True)
class Round:
    """One round of the training code's arithmetic (what it summed into cur_len)."""

    index: int
    start: int  # cur_len before this round
    round_len: int
    instruction_len: int
    correction: int = 0  # the +-1 the codebase applied to this round
    text: str = ""
    char_end: int = 0  # where this round (and the separator the split consumed) ends in the prompt


@dataclass
class RecipeResult:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    mismatch: tuple[int, int] | None = None  # (cur_len, total_len) exactly as LLaVA prints them
    cur_len: int | None = None
    total_len: int | None = None
    rounds: list[Round] = field(default_factory=list)
    crash: str | None = None
    skipped_check: bool = False  # cur_len >= model_max_length: the training code does not compare
    text: str = ""  # the prompt the training code tokenizes (full-prompt recipes)
    turn_texts: list[str] = field(default_factory=list)  # per-turn pieces (per-turn recipes)
    function: str = ""
    template: str = ""
    messages: list[str] = field(default_factory=list)  # the turns as the training code renders them
    turn_roles: list[str] = field(default_factory=list)  # per-turn recipes: the role of each turn text
    intentional_unmask: frozenset = frozenset()  # ids the code unmasks on purpose everywhere
    image_split: bool = False  # the prompt went through tokenizer_image_token
    rendered: Any = None  # the template's Rendered prompt (text + message spans), full-prompt recipes
    prompt: Any = None  # the PromptTokens of `text` (full-prompt recipes)
    turn_encode: Any = None  # per-turn recipes: the Encoder of the tokenizer the code tokenizes each turn with
    image_replaced: int | None = None  # per-turn recipes: the id whose positions became IMAGE_TOKEN_INDEX
    warning_format: str = "WARNING: tokenization mismatch: {0} vs. {1}. (ignored)"

    @property
    def round_lengths(self) -> list[int]:
        return [r.round_len for r in self.rounds]

    @property
    def dropped(self) -> bool:
        return self.mismatch is not None

    @property
    def supervised(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)

    @property
    def warning(self) -> str | None:
        if self.mismatch is None:
            return None
        return self.warning_format.format(*self.mismatch, len(self.rounds))


class TrainingCodeCrash(Exception):
    """Where the modelled training code would raise; the message names the exception it raises."""


# --- tokenizer set-up --------------------------------------------------------------------------


def setup_tokenizer(tokenizer: Any, recipe: "Recipe | str", template: str, pad_token: str | None = None, *,
                    max_length: int | None = None, vision: tuple[str, ...] = ()) -> Any:
    """A copy of `tokenizer` configured the way the recipe's train.py configures it.

    LLaVA: ``--version v0`` adds a ``[PAD]`` token when there is none; every other version sets
    ``pad_token = unk_token`` (None for tokenizers without unk, e.g. Llama-3, Qwen). LLaVA-NeXT only
    does so when an unk token exists. `pad_token` then states the pad the user's run really uses;
    `vision` the tokens ``initialize_vision_tokenizer`` adds (see `codebase.vision_tokens`).
    """
    codebase = recipe.name if isinstance(recipe, Recipe) else recipe
    return _apply(copy.deepcopy(tokenizer), pad_decision(tokenizer, codebase, template, pad_token), max_length, vision)


def _apply(tok: Any, decision: tuple[str, Any], max_length: int | None, vision: tuple[str, ...] = ()) -> Any:
    action, value = decision
    if action == "add":
        tok.add_special_tokens({"pad_token": value})
    elif tok.pad_token != value:
        tok.pad_token = value
    if vision:
        tok.add_tokens(list(vision), special_tokens=True)
    if max_length is not None:
        tok.model_max_length = max_length
    return tok


class PadView:
    """The user's tokenizer as train.py leaves it when it only *sets* ``pad_token`` (and
    ``model_max_length``): every other attribute and call goes to the tokenizer itself, which is
    never modified. Saves the deep copy (about a second for a 150k-entry vocabulary) wherever the
    vocabulary does not change."""

    def __init__(self, base: Any, pad_token: Any, max_length: int | None) -> None:
        self.__dict__["base"] = base
        self.__dict__["pad_token"] = pad_token
        self.__dict__["pad_token_id"] = None if pad_token is None else base.convert_tokens_to_ids(pad_token)
        self.__dict__["model_max_length"] = max_length if max_length is not None else base.model_max_length
        self.__dict__["class_name"] = getattr(base, "class_name", type(base).__name__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["base"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only ({name})")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["base"](*args, **kwargs)

    def __len__(self) -> int:
        return len(self.__dict__["base"])

    def __deepcopy__(self, memo: dict) -> Any:
        return _apply(copy.deepcopy(self.__dict__["base"], memo), ("set", self.pad_token), self.model_max_length)


_SHARED: dict[tuple, tuple[Any, Any]] = {}
_VISION: dict[tuple, tuple[Any, Any]] = {}


def _with_vision(tokenizer: Any, vision: tuple[str, ...]) -> Any:
    """`tokenizer`, or a shared copy with ``initialize_vision_tokenizer``'s tokens added."""
    if not vision:
        return tokenizer
    key = (id(tokenizer), vision)
    hit = _VISION.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    if len(_VISION) >= 32:
        _VISION.clear()
    copied = copy.deepcopy(tokenizer)
    copied.add_tokens(list(vision), special_tokens=True)
    _VISION[key] = (tokenizer, copied)
    return copied


def shared_setup(tokenizer: Any, codebase: str, template: str, pad_token: str | None = None, *,
                 max_length: int | None = None, vision: tuple[str, ...] = ()) -> Any:
    """Like `setup_tokenizer`, for the audit's own read-only use: a `PadView` where train.py only sets
    the pad token, else a deep copy shared between calls with the same outcome."""
    decision = pad_decision(tokenizer, codebase, template, pad_token)
    if decision[0] == "set":
        # the vision tokens come after the pad is set, and setting it adds no token: one copy per vision set-up
        return PadView(_with_vision(tokenizer, tuple(vision)), decision[1], max_length)
    key = (id(tokenizer), decision, max_length, tuple(vision))
    hit = _SHARED.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    if len(_SHARED) >= 16:
        _SHARED.clear()
    configured = _apply(copy.deepcopy(tokenizer), decision, max_length, tuple(vision))
    _SHARED[key] = (tokenizer, configured)
    return configured


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclass(frozen=True)
class Facts:
    """What the arithmetic needs to know about the (set-up) tokenizer."""

    bos_id: int | None
    pad_id: int | None
    legacy: Any  # the `legacy` attribute, or MISSING
    max_length: int
    extra_special_ids: Any  # `additional_special_tokens_ids` (transformers 4), or MISSING (transformers 5)
    unk_id: int | None
    class_name: str = ""

    @classmethod
    def of(cls, tokenizer: Any, max_length: int | None = None) -> "Facts":
        legacy = getattr(tokenizer, "legacy", MISSING)
        extra = getattr(tokenizer, "additional_special_tokens_ids", MISSING)
        limit = max_length if max_length is not None else tokenizer.model_max_length
        return cls(tokenizer.bos_token_id, tokenizer.pad_token_id, legacy, int(min(limit, 10**12)),
                   tuple(extra) if isinstance(extra, (list, tuple)) else MISSING, tokenizer.unk_token_id,
                   getattr(tokenizer, "class_name", None) or type(tokenizer).__name__)


def _alternating(pairs: list[tuple[Any, str]]) -> list[str]:
    """The role handling of ``preprocess_v1/_mpt/_llama_2/_gemma``: ``roles[source[0]["from"]]``,
    skip a leading gpt turn, then ``assert role == conv.roles[j % 2]``."""
    if not pairs:
        raise TrainingCodeCrash("IndexError: list index out of range (empty conversation)")
    for role, _ in pairs:
        if role not in ROLE_KEYS:
            raise TrainingCodeCrash(f"KeyError: {role!r} (roles are only 'human' and 'gpt')")
    if pairs[0][0] != "human":
        pairs = pairs[1:]
    for j, (role, _) in enumerate(pairs):
        if role != ROLE_KEYS[j % 2]:
            raise TrainingCodeCrash(
                f"AssertionError at turn {j}: {role!r} where {ROLE_KEYS[j % 2]!r} must come (roles must alternate)"
            )
    return [m for _, m in pairs]


@dataclass(frozen=True)
class Recipe:
    name: str

    def preprocess(self, conversation: list[dict], tokenizer: Any, template: str, *, has_image: bool,
                   max_length: int | None = None, encoder: Encoder | None = None,
                   mm_use_im_start_end: bool = False) -> RecipeResult:
        encode = encoder if encoder is not None else Encoder(tokenizer)
        facts = Facts.of(tokenizer, max_length)
        return self.run(conversation, encode, facts, template, has_image=has_image, tokenizer=tokenizer,
                        mm_use_im_start_end=mm_use_im_start_end)

    def run(self, conversation: list[dict], encode: Encoder, facts: Facts, template: str, *, has_image: bool,
            tokenizer: Any, mm_use_im_start_end: bool = False) -> RecipeResult:
        used = choose_template(self.name, template).template
        result = RecipeResult(template=used.name)
        try:
            pairs = self._pairs(conversation, used, encode, has_image, mm_use_im_start_end)
            function = self.function_for(used)
            result.function = function.__name__.lstrip("_")
            function(self, result, pairs, used, encode, facts, has_image, tokenizer)
        except _Recorded:
            pass
        except TrainingCodeCrash as crash:
            result.crash = str(crash)
            result.input_ids, result.labels, result.mismatch = [], [], None
        return result

    def _pairs(self, conversation: list[dict], used: Template, encode: Encoder, has_image: bool,
               mm_use_im_start_end: bool) -> list[tuple[Any, str]]:
        """The (from, value) pairs the dataset hands to preprocess; once per sample and set-up (the
        recording pass's are reused: the memo holds the conversation, so its id stays its own)."""
        key = ("pairs", id(conversation), self.name, used.version, has_image, mm_use_im_start_end)
        hit = encode.memo.get(key)
        if hit is not None and hit[0] is conversation:
            return hit[1]
        if has_image:
            pairs = preprocess_multimodal(conversation, self.name, used.version, mm_use_im_start_end=mm_use_im_start_end)
        else:
            pairs = plain_pairs(conversation)
        encode.memo[key] = (conversation, pairs)
        return pairs

    def function_for(self, t: Template) -> Callable[..., None]:
        if t.sep_style is SepStyle.PLAIN:
            return _preprocess_plain
        if t.sep_style is SepStyle.LLAMA_2:
            return _preprocess_llama_2
        if t.version.startswith("v1"):
            return _preprocess_v1
        if t.version == "mpt":
            return _preprocess_mpt
        if self.name == "llava-next":
            if t.version == "qwen":
                return _preprocess_qwen
            if t.version == "gemma":
                return _preprocess_gemma
            if t.version == "llama_v3":
                return _preprocess_llama3
        return _preprocess_single


RECIPES = {name: Recipe(name) for name in CODEBASES}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[check_codebase(name)]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(CODEBASES)}") from None


# --- shared pieces -----------------------------------------------------------------------------


def _require_pad(facts: Facts, has_image: bool = True) -> None:
    if facts.pad_id is None:
        if has_image:
            raise TrainingCodeCrash("pad_token is None: total_len = target.ne(tokenizer.pad_token_id) raises TypeError")
        raise TrainingCodeCrash(
            "pad_token is None: tokenizer(..., padding='longest') raises ValueError('Asking to pad but the tokenizer "
            "does not have a padding token')"
        )


def _render_alternating(result: RecipeResult, pairs: list[tuple[Any, str]], t: Template, encode: Encoder) -> str:
    """The shared start of preprocess_v1/_mpt/_gemma: role checks, then the prompt as the template renders it
    (once per sample: the recording pass's rendering is reused)."""
    result.messages = _alternating(pairs)
    key = (t, tuple(result.messages))
    rendered = encode.memo.get(key)
    if rendered is None:
        rendered = encode.memo[key] = render(t, result.messages)
    result.rendered = rendered
    return rendered.text


class _Recorded(Exception):
    """Ends a recording pass once the prompt is known: the arithmetic needs its tokens first."""


def _prompt(result: RecipeResult, text: str, encode: Encoder, facts: Facts, image_split: bool) -> list[int]:
    """The prompt tokenized as ``preprocess_*`` does: tokenizer_image_token with an image, else
    tokenizer(..., truncation=True, max_length=model_max_length)."""
    result.text = text
    result.image_split = image_split
    result.prompt = encode.prompt(text, image_split, facts.bos_id)
    if encode.recording:
        raise _Recorded
    ids = result.prompt.ids()
    return ids if image_split else ids[: facts.max_length]


def _length(prompt: PromptTokens, a: int, b: int, image_split: bool) -> int:
    """len(tokenizer_image_token(prompt[a:b])) or len(tokenizer(prompt[a:b]).input_ids)."""
    return prompt.alone_image(a, b) if image_split else prompt.alone(a, b)


def _mask(labels: list[int], start: int, stop: int | None = None) -> None:
    """``target[start:stop] = IGNORE_INDEX`` with tensor slice semantics (negative indices count from the end)."""
    lo, hi, _ = slice(start, stop).indices(len(labels))
    if hi > lo:
        labels[lo:hi] = [IGNORE_INDEX] * (hi - lo)


def _finish(result: RecipeResult, ids: list[int], labels: list[int], cur_len: int, facts: Facts) -> None:
    total_len = len(ids) - ids.count(facts.pad_id) if facts.pad_id is not None else len(ids)
    _mask(labels, cur_len)
    result.cur_len, result.total_len = cur_len, total_len
    if cur_len < facts.max_length:
        if cur_len != total_len:
            labels[:] = [IGNORE_INDEX] * len(labels)
            result.mismatch = (cur_len, total_len)
    else:
        result.skipped_check = True
    result.input_ids, result.labels = ids, labels


def _split_rounds(result: RecipeResult, rounds: list[str], sep: str, encode: Encoder, facts: Facts,
                  image_split: bool, labels: list[int], cur_len: int, instruction_drop: int,
                  correction: Callable[[int], int], split_sep: str, round_drop: int = 0, round_add: int = 0) -> int:
    prompt = result.prompt
    pos = 0
    for i, rou in enumerate(rounds):
        start = pos
        pos += len(rou) + len(split_sep)
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        round_len = _length(prompt, start, start + len(rou), image_split) - round_drop + round_add
        instruction_len = _length(prompt, start, start + len(parts[0]) + len(sep), image_split) - instruction_drop
        fix = correction(i)
        round_len += fix
        instruction_len += fix
        _mask(labels, cur_len, cur_len + instruction_len)
        result.rounds.append(Round(i, cur_len, round_len, instruction_len, fix or round_add, rou, pos))
        cur_len += round_len
    return cur_len


# --- the preprocess functions ------------------------------------------------------------------


def _preprocess_v1(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                   encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    text = _render_alternating(result, messages, t, encode)
    _require_pad(facts, has_image)
    ids = _prompt(result, text, encode, facts, has_image)
    labels = list(ids)
    _mask(labels, 0, 1)

    def correction(i: int) -> int:
        if recipe.name == "llava-1.5" or i == 0:
            return 0
        if facts.legacy is MISSING:
            raise TrainingCodeCrash(
                f"AttributeError: {facts.class_name or type(tokenizer).__name__} has no attribute 'legacy' "
                "(preprocess_v1 reads tokenizer.legacy from the second round on)"
            )
        return -1 if (not facts.legacy and tokenizers_at_least_0_14()) else 0

    sep = t.sep + t.roles[1] + ": "
    cur_len = _split_rounds(result, text.split(t.sep2 or ""), sep, encode, facts, has_image, labels, 1, 2,
                            correction, t.sep2 or "")
    _finish(result, ids, labels, cur_len, facts)


def _preprocess_llama_2(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                        encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    result.messages = _alternating(messages)
    if result.messages and not result.messages[0]:
        raise TrainingCodeCrash("AssertionError: first message should not be none")
    result.rendered = render(t, result.messages)
    text = result.rendered.text
    _require_pad(facts, has_image)
    ids = _prompt(result, text, encode, facts, has_image)
    labels = list(ids)
    _mask(labels, 0, 1)
    cur_len = _split_rounds(result, text.split(t.sep2 or ""), "[/INST] ", encode, facts, has_image, labels, 1, 2,
                            lambda i: 0, t.sep2 or "")
    _finish(result, ids, labels, cur_len, facts)


def _mpt_rounds(text: str, sep: str) -> list[str]:
    rounds = text.split(sep)
    joined = [sep.join(rounds[:3])]
    for k in range(3, len(rounds), 2):
        joined.append(sep.join(rounds[k:k + 2]))
    return joined


def _preprocess_mpt(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                    encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    text = _render_alternating(result, messages, t, encode)
    sep = t.sep + t.roles[1]
    rounds = _mpt_rounds(text, t.sep)
    if recipe.name == "llava-1.5":
        # v1.5: always tokenizer_image_token, no truncation; every round adds the separator's length.
        ids = _prompt(result, text, encode, facts, True)
        _require_pad(facts)
        labels = list(ids)
        sep_len = len(encode.prompt(t.sep, True, facts.bos_id).ids())
        cur_len = _split_rounds(result, rounds, sep, encode, facts, True, labels, 0, 0, lambda i: 0, t.sep,
                                round_add=sep_len)
        _finish(result, ids, labels, cur_len, facts)
        return
    _require_pad(facts, has_image)
    ids = _prompt(result, text, encode, facts, has_image)
    labels = list(ids)
    start = 1 if recipe.name == "llava-next" else 0
    _mask(labels, 0, start)
    legacy = facts.legacy if facts.legacy is not MISSING else False
    plus = 1 if (legacy and tokenizers_at_least_0_14()) else 0
    cur_len = _split_rounds(result, rounds, sep, encode, facts, has_image, labels, start, 1,
                            lambda i: plus if i != 0 else 0, t.sep)
    if recipe.name == "llava-next":
        result.warning_format = "WARNING: tokenization mismatch: {0} vs. {1}.(#turns={2} ignored)"
    _finish(result, ids, labels, cur_len, facts)


def _preprocess_gemma(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                      encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    text = _render_alternating(result, messages, t, encode)
    _require_pad(facts, has_image)
    ids = _prompt(result, text, encode, facts, has_image)
    labels = list(ids)
    _mask(labels, 0, 1)
    pieces = text.split(t.sep)
    rounds = [t.sep.join(pieces[k:k + 2]) for k in range(0, len(pieces), 2)]
    cur_len = _split_rounds(result, rounds, t.sep + t.roles[1], encode, facts, has_image, labels, 1, 1,
                            lambda i: 0, t.sep, round_drop=1, round_add=2)
    result.warning_format = "warning: tokenization mismatch: {0} vs. {1}. (ignored)"
    _finish(result, ids, labels, cur_len, facts)


def _preprocess_plain(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                      encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    texts = [m for _, m in messages]
    result.messages = texts
    if len(texts) != 2:
        raise TrainingCodeCrash(f"AssertionError: preprocess_plain needs exactly 2 turns, got {len(texts)}")
    if IMAGE_TOKEN not in texts[0]:
        raise TrainingCodeCrash("AssertionError: preprocess_plain needs <image> in the first turn")
    text = IMAGE_TOKEN + texts[1] + t.sep
    ids = _prompt(result, text, encode, facts, True)
    labels = list(ids)
    prompt_len = result.prompt.alone_image(0, len(IMAGE_TOKEN))
    _mask(labels, 0, prompt_len)
    result.rounds.append(Round(0, 0, len(ids), prompt_len, 0, text))
    result.input_ids, result.labels = ids, labels


def _preprocess_single(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                       encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    """The fallback ``preprocess`` (``_add_speaker_and_signal`` + ``_mask_targets``): no mismatch check."""
    header = f"{t.system}\n\n"
    speakers = [role for role, _ in messages]
    result.messages = [m for _, m in messages]
    names = {"human": t.roles[0], "gpt": t.roles[1]}
    signalled = [f"### {names.get(str(role).lower(), 'unknown')}: {m}\n" for role, m in messages]
    text = header + "".join(signalled) + "### "
    if not has_image:
        _require_pad(facts, has_image)

    def length(s: str) -> int:
        if has_image:
            return len(encode.prompt(s, True, facts.bos_id).ids())
        ids = encode(s)[: facts.max_length]
        return len(ids) - ids.count(facts.pad_id) if facts.pad_id is not None else len(ids)

    ids = _prompt(result, text, encode, facts, has_image)
    labels = list(ids)
    cur = length(header)
    _mask(labels, 0, cur)
    for k, (s, speaker) in enumerate(zip(signalled, speakers)):
        n = length(s)
        if speaker == "human":
            _mask(labels, cur + 2, cur + n)
        result.rounds.append(Round(k, cur, n, n if speaker == "human" else 0, 0, s))
        cur += n
    result.input_ids, result.labels = ids, labels


QWEN_SYSTEM = "You are a helpful assistant."
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
_NEXT_ROLES = {"human": "user", "gpt": "assistant"}


_NEXT_STATE: dict[tuple[int, bool], tuple[Any, Any, Any, Any, Any]] = {}


def _next_state(tokenizer: Any, has_image: bool, encode: Encoder) -> tuple[Any, int | None, Encoder]:
    """What preprocess_qwen / preprocess_llama3 read from their own copy of the tokenizer, to which
    they add ``<image>`` as a special token when the sample has an image: its
    ``additional_special_tokens_ids`` (MISSING in transformers 5; some tokenizer classes list the
    added token there too), the id whose positions become IMAGE_TOKEN_INDEX (without an image:
    ``convert_tokens_to_ids('<image>')``, unk's id or None - every unk of the sample then becomes
    IMAGE_TOKEN_INDEX too), and an Encoder of that copy (the text after an added token is
    tokenized as the tokenizer does it there). Computed once per tokenizer."""
    base = getattr(tokenizer, "base", tokenizer)  # a PadView's pad does not change what is read here
    key = (id(base), has_image)
    hit = _NEXT_STATE.get(key)
    if hit is not None and hit[0] is base:
        return hit[1], hit[2], (hit[3] if has_image else encode)
    if len(_NEXT_STATE) > 32:
        _NEXT_STATE.clear()
    work = tokenizer
    if has_image:
        work = copy.deepcopy(tokenizer)
        work.add_tokens([IMAGE_TOKEN], special_tokens=True)
    extra = getattr(work, "additional_special_tokens_ids", MISSING)
    extra = tuple(extra) if isinstance(extra, (list, tuple)) else MISSING
    replaced = work.convert_tokens_to_ids(IMAGE_TOKEN)
    turn_encode = Encoder(work, derive=False) if has_image else None
    _NEXT_STATE[key] = (base, extra, replaced, turn_encode, work)
    return extra, replaced, (turn_encode if has_image else encode)


def _per_turn(result: RecipeResult, turns: list[tuple[str, str]], pieces: list[str], encode: Encoder, *,
              replaced: int | None, unmask: set, drop_first: bool) -> None:
    """The shared body of preprocess_qwen / preprocess_llama3: each turn tokenized alone (its first
    token dropped for llama3 after the system turn), user/system turns masked, `unmask` ids
    learned everywhere, `replaced` ids turned into IMAGE_TOKEN_INDEX in the input (not the labels)."""
    ids: list[int] = []
    labels: list[int] = []
    for k, ((role, _), piece) in enumerate(zip(turns, pieces)):
        encoded = list(encode(piece, False))
        if drop_first and k:
            encoded = encoded[1:]  # "First is bos token we don't need here"
        ids += encoded
        labels += [IGNORE_INDEX] * len(encoded) if role in ("user", "system") else encoded
    for token in unmask:
        for k in positions(ids, token):
            labels[k] = token
    if replaced is not None:
        for k in positions(ids, replaced):
            ids[k] = IMAGE_TOKEN_INDEX
    result.input_ids, result.labels = ids, labels
    result.turn_texts = pieces
    result.text = "".join(pieces)
    result.turn_encode = encode
    result.image_replaced = replaced


def _preprocess_qwen(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                     encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    turns = [("system", QWEN_SYSTEM)] + _next_turns(messages)
    extra, replaced, turn_encode = _next_state(tokenizer, has_image, encode)
    if extra is MISSING:
        raise TrainingCodeCrash(f"AttributeError: {facts.class_name} has no attribute additional_special_tokens_ids")
    if len(extra) != 2:
        raise TrainingCodeCrash(
            f"ValueError: im_start, im_end = tokenizer.additional_special_tokens_ids unpacks {len(extra)} ids, not 2"
        )
    problem = _chat_problem(tokenizer, QWEN_CHAT_TEMPLATE)
    if problem:
        raise TrainingCodeCrash(problem)
    im_start, im_end = extra
    unmask = {198, im_start, im_end}
    result.intentional_unmask = frozenset(unmask)
    result.messages = [m for _, m in turns[1:]]
    result.turn_roles = [r for r, _ in turns]
    pieces = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns]
    _per_turn(result, turns, pieces, turn_encode, replaced=replaced, unmask=unmask, drop_first=False)


_CHAT_PROBLEMS: dict[tuple[int, str | None], str | None] = {}


def _chat_problem(tokenizer: Any, template: str | None) -> str | None:
    key = (id(tokenizer), template)
    if key not in _CHAT_PROBLEMS:
        if len(_CHAT_PROBLEMS) > 64:
            _CHAT_PROBLEMS.clear()
        _CHAT_PROBLEMS[key] = chat_template_ids_problem(tokenizer, template)
    return _CHAT_PROBLEMS[key]


def _next_turns(pairs: list[tuple[Any, str]]) -> list[tuple[str, str]]:
    """LLaVA-NeXT's per-turn role handling: ``roles[source[0]["from"]]`` (KeyError unless human/gpt),
    skip a leading gpt turn, then ``roles.get(role, role)`` for every turn."""
    if not pairs:
        raise TrainingCodeCrash("IndexError: list index out of range (empty conversation)")
    if pairs[0][0] not in _NEXT_ROLES:
        raise TrainingCodeCrash(f"KeyError: {pairs[0][0]!r} (the first turn must be from 'human' or 'gpt')")
    if pairs[0][0] != "human":
        pairs = pairs[1:]
    return [(_NEXT_ROLES.get(role, role), m) for role, m in pairs]


def _preprocess_llama3(recipe: Recipe, result: RecipeResult, messages: list[tuple[Any, str]], t: Template,
                       encode: Encoder, facts: Facts, has_image: bool, tokenizer: Any) -> None:
    turns = [("system", LLAMA3_SYSTEM)] + _next_turns(messages)
    _, replaced, turn_encode = _next_state(tokenizer, has_image, encode)
    problem = _chat_problem(tokenizer, None)
    if problem:
        raise TrainingCodeCrash(problem)
    convert = tokenizer.convert_tokens_to_ids
    unmask = {convert(tok) for tok in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "\n\n")}
    unmask.discard(None)
    result.intentional_unmask = frozenset(unmask)
    result.messages = [m for _, m in turns[1:]]
    result.turn_roles = [r for r, _ in turns]
    pieces = [_chat_template_text(tokenizer, role, content) for role, content in turns]
    _per_turn(result, turns, pieces, turn_encode, replaced=replaced, unmask=unmask, drop_first=True)


def _chat_template_text(tokenizer: Any, role: str, content: str) -> str:
    try:
        return tokenizer.apply_chat_template([{"role": role, "content": content}], tokenize=False)
    except Exception as exc:  # the training code would raise the same from its own call
        raise TrainingCodeCrash(f"{type(exc).__name__} in apply_chat_template: {exc}") from None


def vision_for(mm_use_im_start_end: bool, mm_use_im_patch_token: bool) -> tuple[str, ...]:
    return tuple(vision_tokens(mm_use_im_start_end, mm_use_im_patch_token))
