"""The label-masking arithmetic of LLaVA-family training code, per separator style and codebase.

A recipe predicts, for one conversation and the user's real tokenizer, what the training code's
``preprocess`` returns: input ids, labels, whether it prints ``WARNING: tokenization mismatch: X vs. Y``
(and then masks every label), the per-round lengths it summed, or where it would raise instead.

Codebases modelled (read from their public source, re-expressed here):
- ``llava-1.5``: haotian-liu/LLaVA at the v1.5 release (before commit 879ef31): no ``legacy``
  corrections; ``preprocess_mpt`` always uses ``tokenizer_image_token`` and adds the separator's
  length to every round.
- ``llava``: LLaVA's main branch: ``preprocess_v1`` subtracts 1 from rounds after the first when
  ``not tokenizer.legacy`` and tokenizers >= 0.14; ``preprocess_mpt`` adds 1 when ``legacy``.
- ``llava-next``: LLaVA-NeXT: the same functions (``preprocess_mpt`` starts counting at 1), plus
  ``preprocess_qwen`` / ``preprocess_llama3`` (per-turn chat templates, fixed unmask ids, no
  mismatch check) and ``preprocess_gemma``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from .conversation import IMAGE_TOKEN, SepStyle, Template, get_template, render
from .tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoder, image_token_ids, image_token_length, special_split_ids

CODEBASES = ("llava-1.5", "llava", "llava-next")
ROLE_KEYS = ("human", "gpt")


@dataclass(frozen=True)
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

    @property
    def round_lengths(self) -> list[int]:
        return [r.round_len for r in self.rounds]

    @property
    def dropped(self) -> bool:
        return self.mismatch is not None

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def warning(self) -> str | None:
        if self.mismatch is None:
            return None
        return f"WARNING: tokenization mismatch: {self.mismatch[0]} vs. {self.mismatch[1]}. (ignored)"


class TrainingCodeCrash(Exception):
    """Where the modelled training code would raise; the message names the exception it raises."""


def tokenizers_at_least_0_14() -> bool:
    import tokenizers

    parts = tokenizers.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (0, 14)


def resolve_template(codebase: str, name: str) -> tuple[Template, str | None]:
    """The conversation the training code really uses for ``--version name`` (and a note when it is
    not the template of that name)."""
    if codebase not in CODEBASES:
        raise KeyError(f"unknown recipe {codebase!r}; known: {', '.join(CODEBASES)}")
    if name == "v0":
        # train.py adds a [PAD] token for v0 and leaves default_conversation alone: vicuna_v1 in
        # LLaVA, vicuna_v0 in LLaVA-NeXT.
        return (get_template("v1"), "--version v0 keeps LLaVA's default conversation (vicuna_v1)") if codebase != "llava-next" else (get_template("v0"), None)
    template = get_template(name) if name in _known_names() else None
    if template is None or codebase not in template.codebases:
        fallback = get_template("vicuna_v1")
        return fallback, f"{codebase} has no template {name!r}: its train.py silently uses vicuna_v1"
    return template, None


def _known_names() -> set[str]:
    from .conversation import TEMPLATES

    return set(TEMPLATES)


def pad_decision(tokenizer: Any, codebase: str, template: str, pad_token: str | None = None) -> tuple[str, Any]:
    """What the recipe's train.py does to the pad token: ("add", "[PAD]") or ("set", value)."""
    if pad_token is not None:
        return ("set", pad_token)
    if template == "v0":
        return ("add", "[PAD]") if tokenizer.pad_token is None else ("set", tokenizer.pad_token)
    if template == "v0.5" or codebase != "llava-next" or tokenizer.unk_token is not None:
        return ("set", tokenizer.unk_token)
    return ("set", tokenizer.pad_token)


def setup_tokenizer(tokenizer: Any, recipe: "Recipe | str", template: str, pad_token: str | None = None, *,
                    max_length: int | None = None) -> Any:
    """A copy of `tokenizer` configured the way the recipe's train.py configures it.

    LLaVA: ``--version v0`` adds a ``[PAD]`` token when there is none; every other version sets
    ``pad_token = unk_token`` (None for tokenizers without unk, e.g. Llama-3, Qwen). LLaVA-NeXT only
    does so when an unk token exists. `pad_token` then states the pad the user's run really uses.
    """
    codebase = recipe.name if isinstance(recipe, Recipe) else recipe
    return _apply(copy.deepcopy(tokenizer), pad_decision(tokenizer, codebase, template, pad_token), max_length)


def _apply(tok: Any, decision: tuple[str, Any], max_length: int | None) -> Any:
    action, value = decision
    if action == "add":
        tok.add_special_tokens({"pad_token": value})
    elif tok.pad_token != value:
        tok.pad_token = value
    if max_length is not None:
        tok.model_max_length = max_length
    return tok


_SHARED: dict[tuple, tuple[Any, Any]] = {}


def shared_setup(tokenizer: Any, codebase: str, template: str, pad_token: str | None = None, *,
                 max_length: int | None = None) -> Any:
    """Like `setup_tokenizer`, but copies are shared between calls with the same outcome (deep-copying
    a 150k-entry tokenizer takes about a second). For the audit's own read-only use."""
    decision = pad_decision(tokenizer, codebase, template, pad_token)
    key = (id(tokenizer), decision, max_length)
    hit = _SHARED.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    if len(_SHARED) >= 16:
        _SHARED.clear()
    configured = _apply(copy.deepcopy(tokenizer), decision, max_length)
    _SHARED[key] = (tokenizer, configured)
    return configured


@dataclass(frozen=True)
class Facts:
    """What the arithmetic needs to know about the (set-up) tokenizer."""

    bos_id: int | None
    pad_id: int | None
    legacy: Any  # the `legacy` attribute, or MISSING
    max_length: int
    extra_special_ids: tuple[int, ...]
    unk_id: int | None

    @classmethod
    def of(cls, tokenizer: Any, max_length: int | None = None) -> "Facts":
        legacy = getattr(tokenizer, "legacy", MISSING)
        extra = getattr(tokenizer, "additional_special_tokens_ids", None)
        if extra is None:
            extra = [tokenizer.convert_tokens_to_ids(n) for n in additional_special_tokens(tokenizer)]
        limit = max_length if max_length is not None else tokenizer.model_max_length
        return cls(tokenizer.bos_token_id, tokenizer.pad_token_id, legacy, int(min(limit, 10**12)),
                   tuple(extra), tokenizer.unk_token_id)


def additional_special_tokens(tokenizer: Any) -> list[str]:
    """What transformers 4.x (which LLaVA-NeXT pins) lists as `additional_special_tokens`: only the
    entries of that name in the tokenizer folder's special_tokens_map.json / tokenizer_config.json.
    transformers 5 dropped the attribute; its `extra_special_tokens` also holds bos/eos for some
    tokenizers, so it is only the fallback for tokenizers that were not loaded from a folder."""
    import json
    from pathlib import Path

    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if folder.is_dir():
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = folder / name
            try:
                data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "additional_special_tokens" in data:
                items = data["additional_special_tokens"] or []
                return [i["content"] if isinstance(i, dict) else str(i) for i in items]
        return []
    names = getattr(tokenizer, "extra_special_tokens", None) or []
    if isinstance(names, dict):
        names = list(names.values())
    return [str(n) for n in names]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def prepare_messages(conversation: list[dict], codebase: str, has_image: bool) -> list[tuple[Any, str]]:
    """(from, value) pairs after ``preprocess_multimodal`` (run only for samples with an image)."""
    pairs = []
    for turn in conversation:
        value = str(turn.get("value", ""))
        if has_image and IMAGE_TOKEN in value:
            if codebase == "llava-next":
                if value.count(IMAGE_TOKEN) == 1 and not value.startswith(IMAGE_TOKEN):
                    value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
            else:
                value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        pairs.append((turn.get("from"), value))
    return pairs


def _alternating(pairs: list[tuple[Any, str]]) -> list[str]:
    """The role handling of ``preprocess_v1/_mpt/_llama_2/_gemma``: skip a leading gpt turn, then
    ``assert role == conv.roles[j % 2]``."""
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


def _render_alternating(result: RecipeResult, pairs: list[tuple[Any, str]], t: Template) -> str:
    """The shared start of preprocess_v1/_mpt/_gemma: role checks, then the prompt as the template renders it."""
    result.messages = _alternating(pairs)
    result.rendered = render(t, result.messages)
    return result.rendered.text


@dataclass(frozen=True)
class Recipe:
    name: str

    def preprocess(self, conversation: list[dict], tokenizer: Any, template: str, *, has_image: bool,
                   max_length: int | None = None, encoder: Encoder | None = None) -> RecipeResult:
        encode = encoder if encoder is not None else Encoder(tokenizer)
        facts = Facts.of(tokenizer, max_length)
        return self.run(conversation, encode, facts, template, has_image=has_image, tokenizer=tokenizer)

    def run(self, conversation: list[dict], encode: Encoder, facts: Facts, template: str, *, has_image: bool,
            tokenizer: Any) -> RecipeResult:
        used, _ = resolve_template(self.name, template)
        result = RecipeResult(template=used.name)
        try:
            pairs = prepare_messages(conversation, self.name, has_image)
            function = self.function_for(used)
            result.function = function.__name__.lstrip("_")
            function(self, result, pairs, used, encode, facts, has_image, tokenizer)
        except TrainingCodeCrash as crash:
            result.crash = str(crash)
            result.input_ids, result.labels, result.mismatch = [], [], None
        return result

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
        return RECIPES[name]
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


def _full_ids(result: RecipeResult, text: str, encode: Encoder, facts: Facts, has_image: bool) -> list[int]:
    """The prompt tokenized as ``preprocess_*`` does: tokenizer_image_token with an image, else
    tokenizer(..., truncation=True, max_length=model_max_length)."""
    result.text = text
    if has_image:
        result.image_split = True
        return image_token_ids(encode, text, facts.bos_id)
    return list(encode(text)[: facts.max_length])


def _length(encode: Encoder, text: str, facts: Facts, has_image: bool) -> int:
    return image_token_length(encode, text, facts.bos_id) if has_image else encode.length(text)


def _finish(result: RecipeResult, ids: list[int], labels: list[int], cur_len: int, facts: Facts) -> None:
    total_len = sum(1 for i in ids if i != facts.pad_id)
    labels[cur_len:] = [IGNORE_INDEX] * max(0, len(labels) - cur_len)
    result.cur_len, result.total_len = cur_len, total_len
    if cur_len < facts.max_length:
        if cur_len != total_len:
            labels[:] = [IGNORE_INDEX] * len(labels)
            result.mismatch = (cur_len, total_len)
    else:
        result.skipped_check = True
    result.input_ids, result.labels = ids, labels


def _mask(labels: list[int], start: int, length: int) -> None:
    end = min(len(labels), start + max(0, length))
    for k in range(max(0, start), end):
        labels[k] = IGNORE_INDEX


def _split_rounds(result: RecipeResult, rounds: list[str], sep: str, encode: Encoder, facts: Facts, has_image: bool,
                  labels: list[int], cur_len: int, instruction_drop: int,
                  correction: Callable[[int], int], split_sep: str) -> int:
    pos = 0
    for i, rou in enumerate(rounds):
        pos += len(rou) + len(split_sep)
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        instruction = parts[0] + sep
        round_len = _length(encode, rou, facts, has_image)
        instruction_len = _length(encode, instruction, facts, has_image) - instruction_drop
        fix = correction(i)
        round_len += fix
        instruction_len += fix
        _mask(labels, cur_len, instruction_len)
        result.rounds.append(Round(i, cur_len, round_len, instruction_len, fix, rou, pos))
        cur_len += round_len
    return cur_len


# --- the preprocess functions ------------------------------------------------------------------


def _preprocess_v1(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                   facts: Facts, has_image: bool, tokenizer: Any) -> None:
    text = _render_alternating(result, messages, t)
    _require_pad(facts, has_image)
    ids = _full_ids(result, text, encode, facts, has_image)
    labels = list(ids)
    _mask(labels, 0, 1)

    def correction(i: int) -> int:
        if recipe.name == "llava-1.5" or i == 0:
            return 0
        if facts.legacy is MISSING:
            raise TrainingCodeCrash(
                f"AttributeError: {type(tokenizer).__name__} has no attribute 'legacy' (preprocess_v1 reads "
                "tokenizer.legacy from the second round on)"
            )
        return -1 if (not facts.legacy and tokenizers_at_least_0_14()) else 0

    sep = t.sep + t.roles[1] + ": "
    cur_len = _split_rounds(result, text.split(t.sep2 or ""), sep, encode, facts, has_image, labels, 1, 2, correction,
                            t.sep2 or "")
    _finish(result, ids, labels, cur_len, facts)


def _preprocess_llama_2(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                        facts: Facts, has_image: bool, tokenizer: Any) -> None:
    messages = _alternating(messages)
    result.messages = messages
    if not messages or not messages[0]:
        raise TrainingCodeCrash("AssertionError: first message should not be none")
    result.rendered = render(t, messages)
    text = result.rendered.text
    _require_pad(facts, has_image)
    ids = _full_ids(result, text, encode, facts, has_image)
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


def _preprocess_mpt(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                    facts: Facts, has_image: bool, tokenizer: Any) -> None:
    text = _render_alternating(result, messages, t)
    sep = t.sep + t.roles[1]
    rounds = _mpt_rounds(text, t.sep)
    if recipe.name == "llava-1.5":
        # v1.5: always tokenizer_image_token, no truncation; every round adds the separator's length.
        result.text = text
        result.image_split = True
        ids = image_token_ids(encode, text, facts.bos_id)
        _require_pad(facts)
        labels = list(ids)
        sep_len = len(image_token_ids(encode, t.sep, facts.bos_id))
        cur_len = 0
        pos = 0
        for i, rou in enumerate(rounds):
            pos += len(rou) + len(t.sep)
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            round_len = len(image_token_ids(encode, rou, facts.bos_id)) + sep_len
            instruction_len = len(image_token_ids(encode, parts[0] + sep, facts.bos_id))
            _mask(labels, cur_len, instruction_len)
            result.rounds.append(Round(i, cur_len, round_len, instruction_len, sep_len, rou, pos))
            cur_len += round_len
        _finish(result, ids, labels, cur_len, facts)
        return
    _require_pad(facts, has_image)
    ids = _full_ids(result, text, encode, facts, has_image)
    labels = list(ids)
    start = 1 if recipe.name == "llava-next" else 0
    _mask(labels, 0, start)
    legacy = facts.legacy if facts.legacy is not MISSING else False
    plus = 1 if (legacy and tokenizers_at_least_0_14()) else 0
    cur_len = _split_rounds(result, rounds, sep, encode, facts, has_image, labels, start, 1,
                            lambda i: plus if i != 0 else 0, t.sep)
    _finish(result, ids, labels, cur_len, facts)


def _preprocess_gemma(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                      facts: Facts, has_image: bool, tokenizer: Any) -> None:
    text = _render_alternating(result, messages, t)
    _require_pad(facts, has_image)
    ids = _full_ids(result, text, encode, facts, has_image)
    labels = list(ids)
    _mask(labels, 0, 1)
    pieces = text.split(t.sep)
    rounds = [t.sep.join(pieces[k:k + 2]) for k in range(0, len(pieces), 2)]
    sep = t.sep + t.roles[1]
    cur_len = 1
    pos = 0
    for i, rou in enumerate(rounds):
        pos += len(rou) + len(t.sep)
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        round_len = _length(encode, rou, facts, has_image) - 1 + 2
        instruction_len = _length(encode, parts[0] + sep, facts, has_image) - 1
        _mask(labels, cur_len, instruction_len)
        result.rounds.append(Round(i, cur_len, round_len, instruction_len, 2, rou, pos))
        cur_len += round_len
    _finish(result, ids, labels, cur_len, facts)


def _preprocess_plain(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                      facts: Facts, has_image: bool, tokenizer: Any) -> None:
    messages = [m for _, m in messages]
    result.messages = messages
    if len(messages) != 2:
        raise TrainingCodeCrash(f"AssertionError: preprocess_plain needs exactly 2 turns, got {len(messages)}")
    if IMAGE_TOKEN not in messages[0]:
        raise TrainingCodeCrash("AssertionError: preprocess_plain needs <image> in the first turn")
    text = IMAGE_TOKEN + messages[1] + t.sep
    result.text = text
    result.image_split = True
    ids = image_token_ids(encode, text, facts.bos_id)
    labels = list(ids)
    prompt_len = len(image_token_ids(encode, IMAGE_TOKEN, facts.bos_id))
    _mask(labels, 0, prompt_len)
    result.rounds.append(Round(0, 0, len(ids), prompt_len, 0, text))
    result.input_ids, result.labels = ids, labels


def _preprocess_single(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                       facts: Facts, has_image: bool, tokenizer: Any) -> None:
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
            return len(image_token_ids(encode, s, facts.bos_id))
        return sum(1 for i in encode(s)[: facts.max_length] if i != facts.pad_id)

    ids = _full_ids(result, text, encode, facts, has_image)
    labels = list(ids)
    cur = length(header)
    _mask(labels, 0, cur)
    for k, (s, speaker) in enumerate(zip(signalled, speakers)):
        n = length(s)
        if speaker == "human":
            _mask(labels, cur + 2, n - 2)
        result.rounds.append(Round(k, cur, n, n if speaker == "human" else 0, 0, s))
        cur += n
    result.input_ids, result.labels = ids, labels


QWEN_SYSTEM = "You are a helpful assistant."
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
_NEXT_ROLES = {"human": "user", "gpt": "assistant"}


def _turn_ids(encode: Encoder, text: str, has_image: bool, image_id: int) -> list[int]:
    if has_image:
        return special_split_ids(encode, text, image_id)
    return list(encode(text, False))


def _preprocess_qwen(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                     facts: Facts, has_image: bool, tokenizer: Any) -> None:
    if len(facts.extra_special_ids) != 2:
        raise TrainingCodeCrash(
            f"ValueError: im_start, im_end = tokenizer.additional_special_tokens_ids unpacks "
            f"{len(facts.extra_special_ids)} ids, not 2"
        )
    im_start, im_end = facts.extra_special_ids
    image_id = IMAGE_TOKEN_INDEX  # the id <image> gets once added; replaced by -200 anyway
    unmask = {198, im_start, im_end}
    result.intentional_unmask = frozenset(unmask)
    turns = [("system", QWEN_SYSTEM)] + _next_turns(recipe, messages)
    result.messages = [m for _, m in turns[1:]]
    result.turn_roles = [r for r, _ in turns]
    ids: list[int] = []
    labels: list[int] = []
    for role, content in turns:
        piece = f"<|im_start|>{role}\n{content}<|im_end|>\n"
        result.turn_texts.append(piece)
        encoded = _turn_ids(encode, piece, has_image, image_id)
        ids += encoded
        labels += [IGNORE_INDEX] * len(encoded) if role in ("user", "system") else encoded
    _next_unmask(ids, labels, unmask, has_image)
    result.input_ids, result.labels = ids, labels
    result.text = "".join(result.turn_texts)


def _next_turns(recipe: Recipe, pairs: list[tuple[Any, str]]) -> list[tuple[str, str]]:
    """LLaVA-NeXT's per-turn role handling: ``roles[source[0]["from"]]`` (KeyError unless human/gpt),
    skip a leading gpt turn, then ``roles.get(role, role)`` for every turn."""
    if not pairs:
        raise TrainingCodeCrash("IndexError: list index out of range (empty conversation)")
    if pairs[0][0] not in _NEXT_ROLES:
        raise TrainingCodeCrash(f"KeyError: {pairs[0][0]!r} (the first turn must be from 'human' or 'gpt')")
    if pairs[0][0] != "human":
        pairs = pairs[1:]
    return [(_NEXT_ROLES.get(role, role), m) for role, m in pairs]


def _next_unmask(ids: list[int], labels: list[int], unmask: set, has_image: bool) -> None:
    for k, token in enumerate(ids):
        if token in unmask:
            labels[k] = token
        if has_image and token == IMAGE_TOKEN_INDEX:
            labels[k] = IGNORE_INDEX if labels[k] == IMAGE_TOKEN_INDEX else labels[k]


def _preprocess_llama3(recipe: Recipe, result: RecipeResult, messages: list[str], t: Template, encode: Encoder,
                       facts: Facts, has_image: bool, tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingCodeCrash("ValueError: tokenizer.chat_template is not set (apply_chat_template needs it)")
    convert = tokenizer.convert_tokens_to_ids
    unmask = {convert(tok) for tok in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "\n\n")}
    unmask.discard(None)
    result.intentional_unmask = frozenset(unmask)
    turns = [("system", LLAMA3_SYSTEM)] + _next_turns(recipe, messages)
    result.messages = [m for _, m in turns[1:]]
    result.turn_roles = [r for r, _ in turns]
    ids: list[int] = []
    labels: list[int] = []
    for k, (role, content) in enumerate(turns):
        piece = _chat_template_text(tokenizer, role, content)
        result.turn_texts.append(piece)
        encoded = _turn_ids(encode, piece, has_image, IMAGE_TOKEN_INDEX)
        if k:
            encoded = encoded[1:]  # "First is bos token we don't need here"
        ids += encoded
        labels += [IGNORE_INDEX] * len(encoded) if role in ("user", "system") else encoded
    _next_unmask(ids, labels, unmask, has_image)
    result.input_ids, result.labels = ids, labels
    result.text = "".join(result.turn_texts)


def _chat_template_text(tokenizer: Any, role: str, content: str) -> str:
    try:
        return tokenizer.apply_chat_template([{"role": role, "content": content}], tokenize=False)
    except Exception as exc:  # the training code would raise the same from its own call
        raise TrainingCodeCrash(f"{type(exc).__name__} in apply_chat_template: {exc}") from None
