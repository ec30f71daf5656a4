"""Per-sample analysis shared by the LD10x checks: recipe prediction, oracle, drift, likely cause.

`analyze` runs the chosen recipe and the oracle over many conversations with one batched
tokenization (see `Encoder`): a recording pass collects every text the training code would
tokenize, one call tokenizes them all, and the arithmetic then runs from the cache.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Sequence

from .conversation import GPT, HUMAN, IMAGE_TOKEN, SepStyle, Template, render
from .oracle import OracleResult, oracle_full_prompt, oracle_per_turn
from .recipes import Facts, Recipe, RecipeResult, get_recipe, resolve_template
from .tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoder

DEFAULT_IMAGE_FEATURES = 576  # CLIP ViT-L/14-336: what one <image> becomes inside the model


@dataclass(frozen=True)
class SampleInput:
    """One conversation as the training code sees it."""

    id: str
    conversation: list[dict]
    images: int  # 1 for "image": "x.jpg", len(list) for a list, 0 when absent
    has_image_key: bool | None = None  # LLaVA tests `'image' in sample`, not the value

    @property
    def has_image(self) -> bool:
        return self.has_image_key if self.has_image_key is not None else self.images > 0


@dataclass(frozen=True)
class Drift:
    position: int
    kind: str  # "answer masked" | "first answer token masked" | "end of turn not learned" | "prompt learned"
    token: str
    round: int  # 1-based


@dataclass
class SampleAnalysis:
    sample: SampleInput
    index: int
    result: RecipeResult
    oracle: OracleResult | None = None
    drifts: list[Drift] = field(default_factory=list)
    boundary_deltas: list[int] = field(default_factory=list)  # recipe cur_len - true length after each round
    drift_round: int | None = None  # 1-based round where the arithmetic first departs from the tokens
    cause: str = ""
    supervised_after_truncation: int = 0
    truncated: bool = False
    placeholders: int = 0
    ids_agree: bool = True

    @property
    def dropped(self) -> bool:
        return self.result.mismatch is not None


def placeholders_in_human_turns(conversation: Sequence[dict]) -> int:
    return sum(str(t.get("value", "")).count(IMAGE_TOKEN) for t in conversation if t.get("from") == "human")


def _token_text(tokenizer: Any, token: int) -> str:
    if token == IMAGE_TOKEN_INDEX:
        return IMAGE_TOKEN
    try:
        return tokenizer.convert_ids_to_tokens(int(token))
    except Exception:
        return str(token)


def _oracle(result: RecipeResult, encode: Encoder, template: Template, facts: Facts, has_image: bool,
            tokenizer: Any) -> OracleResult | None:
    if result.crash:
        return None
    if result.turn_texts:
        answers = [(k, text) for k, (role, text) in enumerate(zip(result.turn_roles, [""] + result.messages))
                   if role == "assistant"]
        llama3 = template.sep_style is SepStyle.LLAMA_3
        return oracle_per_turn(encode, result.turn_texts, answers, template.learned_end, has_image=has_image,
                               drop_first_after_first=llama3)
    return oracle_full_prompt(encode, template, result.messages, has_image=result.image_split, bos_id=facts.bos_id,
                              rendered=result.rendered)


def _round_of(position: int, result: RecipeResult) -> int:
    for r in result.rounds:
        if r.start <= position < r.start + r.round_len:
            return r.index + 1
    return len(result.rounds) if result.rounds else 1


def _true_boundaries(result: RecipeResult, oracle: OracleResult) -> list[int]:
    """Tokens of the full tokenization that lie before each round's end (by character offsets)."""
    # Special tokens added by the tokenizer (BOS) have empty offsets at 0 and count as "before".
    starts = sorted(s for s, _ in oracle.char_spans)
    return [bisect_left(starts, r.char_end) for r in result.rounds]


def _blank_at_edge(text: str, start: int, end: int, edges: set[int]) -> bool:
    return end > start and not text[start:end].strip() and (start in edges or end in edges)


def _compare(analysis: SampleAnalysis, tokenizer: Any, template: Template) -> None:
    result, oracle = analysis.result, analysis.oracle
    if oracle is None:
        return
    n = min(len(result.input_ids), len(oracle.input_ids))
    analysis.ids_agree = result.input_ids[:n] == oracle.input_ids[:n]
    if result.rounds and template.sep_style is not SepStyle.PLAIN and not result.turn_texts:
        truth = _true_boundaries(result, oracle)
        cur = [r.start + r.round_len for r in result.rounds]
        analysis.boundary_deltas = [c - t for c, t in zip(cur, truth)]
        for k, delta in enumerate(analysis.boundary_deltas):
            if delta:
                analysis.drift_round = k + 1
                break
    if result.mismatch is not None or not analysis.ids_agree:
        return
    rendered = result.rendered if result.rendered is not None else render(template, result.messages)
    rendered_spans = rendered.spans if not result.turn_texts else ()
    human_ranges = [(s.start, s.end) for s in rendered_spans if s.role == HUMAN]
    # Per-turn recipes learn the assistant turn's role header on purpose.
    assistant_turns = []
    if result.turn_texts:
        pos = 0
        for role, piece in zip(result.turn_roles, result.turn_texts):
            if role == "assistant":
                answer = [a for a, _ in oracle.spans if pos <= a < pos + len(piece)]
                assistant_turns.append((pos, answer[0] if answer else pos + len(piece)))
            pos += len(piece)
    answer_starts = {s.start for s in rendered_spans if s.role == GPT}
    answer_ends = [(s.end, s.end_stop) for s in rendered_spans if s.role == GPT and s.end_stop > s.end]
    edges = {e for span in oracle.spans for e in span}
    for p in range(n):
        want, got = oracle.labels[p], result.labels[p]
        if (want == IGNORE_INDEX) == (got == IGNORE_INDEX):
            continue
        start, end = oracle.char_spans[p]
        if _blank_at_edge(oracle.text, start, end, edges):
            continue  # a lone space between prompt and answer belongs to either side
        token = _token_text(tokenizer, result.input_ids[p])
        if want != IGNORE_INDEX:
            if any(a <= start < b or (a < end <= b) for a, b in answer_ends):
                kind = "end of turn not learned"
            elif any(a <= start <= a + 1 for a in answer_starts) or (p and oracle.labels[p - 1] == IGNORE_INDEX):
                kind = "first answer token masked"
            else:
                kind = "answer token masked"
        else:
            if result.input_ids[p] in result.intentional_unmask:
                continue
            if any(a <= start < b for a, b in assistant_turns):
                continue
            kind = "prompt token learned"
            if any(a <= start < b for a, b in human_ranges):
                kind = "user text learned"
        analysis.drifts.append(Drift(p, kind, token, _round_of(p, result)))


def _truncation(analysis: SampleAnalysis, facts: Facts, image_features: int) -> None:
    """Supervised tokens left once each image becomes `image_features` positions and the sequence is
    cut at model_max_length (LLaVA truncates after the image features are inserted)."""
    labels, ids = analysis.result.labels, analysis.result.input_ids
    length = 0
    left = 0
    for token, label in zip(ids, labels):
        length += image_features if token == IMAGE_TOKEN_INDEX else 1
        if length > facts.max_length:
            analysis.truncated = True
            break
        if label != IGNORE_INDEX:
            left += 1
    analysis.supervised_after_truncation = left


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cause(analysis: SampleAnalysis, template: Template, facts: Facts, tokenizer: Any) -> str:
    result = analysis.result
    if result.crash:
        return "the training code raises here"
    cur, total = result.mismatch if result.mismatch else (result.cur_len or 0, result.total_len or 0)
    pads = sum(1 for i in result.input_ids if i == facts.pad_id)
    empty = [k for k, m in enumerate(result.messages) if k % 2 == 1 and not m.strip()]
    if empty:
        return f"empty answer in turn {empty[0] + 1}"
    seps = [s for s in template.separators if any(s in m for m in result.messages)]
    if seps:
        return f"separator text {seps[0]!r} inside a message"
    if result.mismatch and pads:
        same = [n for n in ("eos", "unk") if tokenizer.pad_token == getattr(tokenizer, f"{n}_token")]
        label = f"pad equal to {same[0]}: " if same else ""
        return (f"{label}the pad token {tokenizer.pad_token!r} occurs {pads} time(s) in the prompt and "
                "total_len does not count it")
    if result.mismatch and cur <= 2 < total:
        return "wrong template: the split on the separator failed (no rounds counted)"
    split_sep = template.sep2 if template.sep_style in (SepStyle.TWO, SepStyle.LLAMA_2) else template.sep
    if result.mismatch and split_sep and split_sep.strip():
        pieces = len(encode_plain(tokenizer, split_sep.strip()))
        if pieces > 1:
            return (f"wrong template: its separator {split_sep.strip()!r} is {pieces} tokens for this tokenizer, "
                    "not the single special token the arithmetic assumes")
    deltas = analysis.boundary_deltas
    if result.mismatch and deltas:
        first = analysis.drift_round or 1
        steps = [deltas[0]] + [b - a for a, b in zip(deltas, deltas[1:])]
        no_bos = facts.bos_id is None or not result.input_ids or result.input_ids[0] != facts.bos_id
        later = steps[1:] if steps[0] in (0, -1) else steps
        if no_bos and later and all(step == -1 for step in later):
            return ("BOS assumption: each round's count relies on a BOS token (or the `legacy` +1) that this "
                    f"tokenizer does not add (-1 per round from round {first})")
        if first == 1 and all(step == 0 for step in steps[1:]):
            if no_bos:
                return f"BOS assumption: the arithmetic counts a BOS this tokenizer does not add (off by {deltas[0]:+d})"
            return f"BOS assumption: the round arithmetic is off by {deltas[0]:+d} at the first round"
        legacy = facts.legacy
        legacy_txt = "no `legacy` attribute" if repr(legacy) == "MISSING" else f"legacy={legacy}"
        return (f"round {first} drifts by {deltas[first - 1]:+d} ({steps[-1]:+d} per round): separator {split_sep!r} "
                f"is tokenized differently in context than alone ({legacy_txt}: `legacy` behaviour / tokenizers>=0.14)")
    if result.skipped_check:
        return "truncation: cur_len reached model_max_length, so the training code skips its comparison"
    if analysis.drifts:
        kinds = sorted({d.kind for d in analysis.drifts})
        return "labels differ from the answer spans: " + ", ".join(kinds)
    return ""


def analyze(samples: Sequence[SampleInput], tokenizer: Any, template_name: str, recipe: str | Recipe = "llava", *,
            max_length: int | None = None, image_features: int = DEFAULT_IMAGE_FEATURES,
            encoder: Encoder | None = None) -> list[SampleAnalysis]:
    """Analyse conversations with an already set-up tokenizer (see `setup_tokenizer`)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    template, _ = resolve_template(recipe.name, template_name)
    facts = Facts.of(tokenizer, max_length)
    encode = encoder if encoder is not None else Encoder(tokenizer)

    def one(k: int, sample: SampleInput, recording: bool = False) -> SampleAnalysis:
        result = recipe.run(sample.conversation, encode, facts, template_name, has_image=sample.has_image,
                            tokenizer=tokenizer)
        analysis = SampleAnalysis(sample, k, result)
        if not recording:  # the oracle tokenizes the same texts the recipe asked for
            analysis.oracle = _oracle(result, encode, template, facts, sample.has_image, tokenizer)
        return analysis

    encode.recording = True
    for k, sample in enumerate(samples):
        one(k, sample, recording=True)
    encode.recording = False
    encode.prefetch()
    out = []
    for k, sample in enumerate(samples):
        analysis = one(k, sample)
        analysis.placeholders = placeholders_in_human_turns(sample.conversation)
        _compare(analysis, tokenizer, template)
        _truncation(analysis, facts, image_features if sample.has_image else 1)
        analysis.cause = _cause(analysis, template, facts, tokenizer)
        out.append(analysis)
    return out
