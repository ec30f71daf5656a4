"""Per-sample analysis shared by the LD10x checks: recipe prediction, oracle, drift, likely cause.

`analyze` runs the chosen recipe and the oracle over many conversations with one batched
tokenization (see `Encoder`): a recording pass collects the prompts the training code would
tokenize, one call tokenizes them all, and the arithmetic then runs from the cache, deriving the
round and instruction lengths from the prompts' own tokenization (`PromptTokens`). A `Verifier`
reruns chosen samples on the exact path and switches the run to it at the first difference.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Sequence

from .conversation import GPT, HUMAN, IMAGE_TOKEN, SepStyle, Template, render
from .oracle import OracleResult, oracle_full_prompt, oracle_per_turn
from .recipes import Facts, Recipe, RecipeResult, get_recipe, resolve_template
from .tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoder, Verifier

DEFAULT_IMAGE_FEATURES = 576  # CLIP ViT-L/14-336: what one <image> becomes inside the model


@dataclass(frozen=True)
class SampleInput:
    """One conversation as the training code sees it."""

    id: str
    conversation: list[dict]
    images: int  # 1 for "image": "x.jpg", len(list) for a list, 0 when absent
    has_image_key: bool | None = None  # LLaVA tests `'image' in sample`, not the value
    has_video_key: bool = False  # LLaVA-NeXT treats a "video" record as multimodal too
    index: int = -1  # position in the data file

    @property
    def has_image(self) -> bool:
        return self.has_image_key if self.has_image_key is not None else self.images > 0

    def multimodal(self, codebase: str) -> bool:
        """Whether the codebase's dataset runs preprocess_multimodal and passes has_image=True
        (`codebase.multimodal_keys`: an image key; for LLaVA-NeXT also a video key)."""
        return self.has_image or (self.has_video_key and codebase == "llava-next")

    def visual_inputs(self, codebase: str) -> int:
        """Images the model gets (a LLaVA-NeXT video is one more visual input)."""
        return self.images + (1 if self.has_video_key and codebase == "llava-next" else 0)


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
    cause: str = ""  # the same text for every sample with the same cause (findings group on it)
    signature: str = ""  # how cur_len - total_len behaves over the rounds, e.g. "+1 from round 1, constant"
    problem: str | None = None  # the conversation itself is malformed (a data problem, not the template's)
    supervised_after_truncation: int = 0
    truncated: bool = False
    placeholders: int = 0
    ids_agree: bool = True

    @property
    def dropped(self) -> bool:
        return self.result.mismatch is not None

    @property
    def bad(self) -> bool:
        return self.result.mismatch is not None or bool(self.result.crash) or bool(self.drifts)


def placeholders_in_human_turns(conversation: Sequence[dict]) -> int:
    return sum(str(t.get("value", "")).count(IMAGE_TOKEN) for t in conversation if t.get("from") == "human")


def placeholders_in_turns(conversation: Sequence[dict]) -> int:
    return sum(str(t.get("value", "")).count(IMAGE_TOKEN) for t in conversation)


ROLES = ("human", "gpt")


def conversation_problem(conversation: Sequence[dict]) -> str | None:
    """Why the conversation itself is malformed (whatever the template), or None.

    One-sided (no human or no gpt turn), out of order (two turns of one role in a row, after the
    leading gpt turn the training code skips), unknown roles, or no turns at all."""
    if not conversation:
        return "empty conversation (no turns)"
    roles = [t.get("from") for t in conversation]
    unknown = sorted({str(r) for r in roles if r not in ROLES})
    if unknown:
        return f"unknown role {unknown[0]!r} (only 'human' and 'gpt')"
    if "gpt" not in roles:
        return "one-sided: no gpt turn (nothing to learn)"
    if "human" not in roles:
        return "one-sided: no human turn"
    body = roles[1:] if roles[0] == "gpt" else roles
    for k in range(1, len(body)):
        if body[k] == body[k - 1]:
            return f"out of order: two {body[k]} turns in a row"
    if body and body[-1] == "human":
        return "ends with an unanswered human turn"
    return None


def _token_text(tokenizer: Any, token: int) -> str:
    if token == IMAGE_TOKEN_INDEX:
        return IMAGE_TOKEN
    try:
        return tokenizer.convert_ids_to_tokens(int(token))
    except Exception:
        return str(token)


def _oracle(result: RecipeResult, encode: Encoder, template: Template, has_image: bool) -> OracleResult | None:
    if result.crash:
        return None
    if result.turn_texts:
        answers = [(k, text) for k, (role, text) in enumerate(zip(result.turn_roles, [""] + result.messages))
                   if role == "assistant"]
        llama3 = template.sep_style is SepStyle.LLAMA_3
        return oracle_per_turn(result.turn_encode or encode, result.turn_texts, answers, template.learned_end,
                               replaced=result.image_replaced, drop_first_after_first=llama3)
    if result.prompt is None:
        return None
    rendered = result.rendered if result.rendered is not None else render(template, result.messages)
    if rendered.text != result.text:
        return None  # the generic preprocess path builds its own text: no template spans to compare with
    return oracle_full_prompt(result.prompt, rendered)


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


def _expected_labels(analysis: SampleAnalysis, n: int) -> list[int]:
    """The oracle's labels plus what a per-turn recipe learns on purpose (role headers of assistant
    turns, its unmask ids): equal to the recipe's labels when nothing drifted."""
    result, oracle = analysis.result, analysis.oracle
    expected = oracle.labels[:n]
    if not result.turn_texts:
        return expected
    ids = result.input_ids
    unmask = result.intentional_unmask
    for k in range(n):
        if ids[k] in unmask:
            expected[k] = ids[k]
    pos = 0
    starts = [s for s, _ in oracle.char_spans]
    for role, piece in zip(result.turn_roles, result.turn_texts):
        if role == "assistant":
            answer = [a for a, _ in oracle.spans if pos <= a < pos + len(piece)]
            stop = answer[0] if answer else pos + len(piece)
            for k in range(bisect_left(starts, pos), min(n, bisect_left(starts, stop))):
                expected[k] = result.labels[k] if result.labels[k] != IGNORE_INDEX else expected[k]
        pos += len(piece)
    return expected


def _compare(analysis: SampleAnalysis, tokenizer: Any, template: Template) -> None:
    result, oracle = analysis.result, analysis.oracle
    if oracle is None:
        return
    n = min(len(result.input_ids), len(oracle.input_ids))
    analysis.ids_agree = result.input_ids[:n] == oracle.input_ids[:n]
    if result.mismatch is not None and result.rounds and template.sep_style is not SepStyle.PLAIN \
            and not result.turn_texts:
        truth = _true_boundaries(result, oracle)
        cur = [r.start + r.round_len for r in result.rounds]
        analysis.boundary_deltas = [c - t for c, t in zip(cur, truth)]
        for k, delta in enumerate(analysis.boundary_deltas):
            if delta:
                analysis.drift_round = k + 1
                break
    if result.mismatch is not None or not analysis.ids_agree:
        return
    if result.labels[:n] == _expected_labels(analysis, n):
        return
    rendered_spans = result.rendered.spans if result.rendered is not None and not result.turn_texts else ()
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
    images = ids.count(IMAGE_TOKEN_INDEX)
    if len(ids) + images * (image_features - 1) <= facts.max_length:
        analysis.supervised_after_truncation = analysis.result.supervised
        return
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


def _signature(deltas: list[int]) -> str:
    """How cur_len - (true tokens) moves over the rounds: the grouping key 'constant' / 'per round'."""
    if not deltas:
        return ""
    first = next((k for k, d in enumerate(deltas) if d), None)
    if first is None:
        return "0 at every round boundary"
    steps = [b - a for a, b in zip(deltas[first:], deltas[first + 1:])]
    if not steps or all(s == 0 for s in steps):
        return f"constant {deltas[first]:+d} from round {first + 1}"
    if len(set(steps)) == 1 and steps[0] == deltas[first]:
        return f"{deltas[first]:+d} per round from round {first + 1}"
    return f"{deltas[first]:+d} at round {first + 1}, then {'/'.join(f'{s:+d}' for s in steps)}"


def _cause(analysis: SampleAnalysis, template: Template, facts: Facts, tokenizer: Any) -> str:
    """The cause, worded the same for every sample that shares it (per-sample numbers live elsewhere)."""
    result = analysis.result
    if analysis.problem and (result.crash or result.mismatch or analysis.drifts):
        return f"data problem: {analysis.problem}"
    if result.crash:
        return "the training code raises here"
    cur, total = result.mismatch if result.mismatch else (result.cur_len or 0, result.total_len or 0)
    pads = result.input_ids.count(facts.pad_id) if result.mismatch and facts.pad_id is not None else 0
    empty = [k for k, m in enumerate(result.messages) if k % 2 == 1 and not m.strip()]
    if empty:
        return "empty answer"
    seps = [s for s in template.separators if any(s in m for m in result.messages)]
    if seps:
        return f"separator text {seps[0]!r} inside a message"
    if result.mismatch and pads:
        same = [n for n in ("eos", "unk") if tokenizer.pad_token == getattr(tokenizer, f"{n}_token")]
        label = f"pad equal to {same[0]}: " if same else ""
        return (f"{label}the pad token {tokenizer.pad_token!r} occurs in the prompt and total_len does not count "
                "it")
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
        steps = [deltas[0]] + [b - a for a, b in zip(deltas, deltas[1:])]
        no_bos = facts.bos_id is None or not result.input_ids or result.input_ids[0] != facts.bos_id
        later = steps[1:] if steps[0] in (0, -1) else steps
        bos_text = ("BOS assumption: the arithmetic counts a BOS token (or the `legacy` +1) in every round that this "
                    "tokenizer does not add")
        if no_bos and later and all(step == -1 for step in later):
            return bos_text
        if analysis.drift_round == 1 and all(step == 0 for step in steps[1:]):
            if no_bos:
                return bos_text
            return "BOS assumption: the round arithmetic is off at the first round"
        legacy = facts.legacy
        legacy_txt = "no `legacy` attribute" if repr(legacy) == "MISSING" else f"legacy={legacy}"
        return (f"separator {split_sep!r} is tokenized differently in context than alone ({legacy_txt}: `legacy` "
                "behaviour / tokenizers>=0.14)")
    if result.mismatch:
        return "the per-round token counts differ from the whole prompt's"
    if result.skipped_check:
        return "truncation: cur_len reached model_max_length, so the training code skips its comparison"
    if analysis.drifts:
        kinds = sorted({d.kind for d in analysis.drifts})
        return "labels differ from the answer spans: " + ", ".join(kinds)
    return ""


def _run(recipe: Recipe, sample: SampleInput, encode: Encoder, facts: Facts, template_name: str, tokenizer: Any,
         mm_use_im_start_end: bool) -> RecipeResult:
    return recipe.run(sample.conversation, encode, facts, template_name, has_image=sample.multimodal(recipe.name),
                      tokenizer=tokenizer, mm_use_im_start_end=mm_use_im_start_end)


def _same(a: RecipeResult, b: RecipeResult) -> bool:
    return (a.crash, a.mismatch, a.round_lengths, [r.instruction_len for r in a.rounds], a.input_ids, a.labels) == \
           (b.crash, b.mismatch, b.round_lengths, [r.instruction_len for r in b.rounds], b.input_ids, b.labels)


def analyze(samples: Sequence[SampleInput], tokenizer: Any, template_name: str, recipe: str | Recipe = "llava", *,
            max_length: int | None = None, image_features: int = DEFAULT_IMAGE_FEATURES,
            encoder: Encoder | None = None, verifier: Verifier | None = None,
            mm_use_im_start_end: bool = False) -> list[SampleAnalysis]:
    """Analyse conversations with an already set-up tokenizer (see `setup_tokenizer`)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    template, _ = resolve_template(recipe.name, template_name)
    facts = Facts.of(tokenizer, max_length)
    encode = encoder if encoder is not None else Encoder(tokenizer)
    results = _batched(samples, recipe, encode, facts, template_name, tokenizer, mm_use_im_start_end, verifier)
    out = []
    for k, (sample, result) in enumerate(zip(samples, results)):
        multimodal = sample.multimodal(recipe.name)
        analysis = SampleAnalysis(sample, k, result)
        analysis.problem = conversation_problem(sample.conversation)
        analysis.oracle = _oracle(result, encode, template, multimodal)
        analysis.placeholders = placeholders_in_human_turns(sample.conversation)
        _compare(analysis, tokenizer, template)
        _truncation(analysis, facts, image_features if multimodal else 1)
        analysis.cause = _cause(analysis, template, facts, tokenizer)
        if result.mismatch is not None:
            analysis.signature = _signature(analysis.boundary_deltas)
        out.append(analysis)
    return out


def recipe_results(samples: Sequence[SampleInput], tokenizer: Any, template_name: str, recipe: str | Recipe = "llava",
                   *, max_length: int | None = None, encoder: Encoder | None = None,
                   mm_use_im_start_end: bool = False) -> list[RecipeResult]:
    """What the training code's preprocess returns for each sample (with an already set-up tokenizer):
    one batched tokenization of the prompts, then the arithmetic."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    encode = encoder if encoder is not None else Encoder(tokenizer)
    return _batched(samples, recipe, encode, Facts.of(tokenizer, max_length), template_name, tokenizer,
                    mm_use_im_start_end, None)


def _batched(samples: Sequence[SampleInput], recipe: Recipe, encode: Encoder, facts: Facts, template_name: str,
             tokenizer: Any, mm_use_im_start_end: bool, verifier: Verifier | None) -> list[RecipeResult]:
    """A recording pass collects the prompts, one batched call tokenizes them, then the arithmetic."""
    encode.recording = True
    for sample in samples:
        _run(recipe, sample, encode, facts, template_name, tokenizer, mm_use_im_start_end)
    encode.recording = False
    encode.prefetch()
    return _results(samples, recipe, encode, facts, template_name, tokenizer, mm_use_im_start_end, verifier)


def _results(samples: Sequence[SampleInput], recipe: Recipe, encode: Encoder, facts: Facts, template_name: str,
             tokenizer: Any, mm_use_im_start_end: bool, verifier: Verifier | None) -> list[RecipeResult]:
    """The recipe's result per sample; the samples the verifier picks run on the exact path too (their
    exact texts tokenized in one batch), and the first difference reruns everything exactly (and keeps
    the run on the exact path)."""
    results = []
    checked = []
    for k, sample in enumerate(samples):
        check = verifier is not None and encode.derive and verifier.wants(sample.index if sample.index >= 0 else k)
        encode.note_exact = check
        try:
            results.append(_run(recipe, sample, encode, facts, template_name, tokenizer, mm_use_im_start_end))
        finally:
            encode.note_exact = False
        if check:
            checked.append(k)
    if not checked:
        return results
    encode.prefetch()
    encode.derive = False
    try:
        for k in checked:
            exact = _run(recipe, samples[k], encode, facts, template_name, tokenizer, mm_use_im_start_end)
            verifier.checked += 1
            if not _same(results[k], exact):
                verifier.disproved = (f"sample {samples[k].id}: round lengths derived from the prompt's tokenization "
                                      "differ from tokenizing each round; the exact path is used from here on")
                return [_run(recipe, s, encode, facts, template_name, tokenizer, mm_use_im_start_end) for s in samples]
    finally:
        if verifier.disproved is None:
            encode.derive = True
    return results
