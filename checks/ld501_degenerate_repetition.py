"""LD501: degenerate repetition with finite logits (one token, or a short n-gram, over and over)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from llava_doctor.artifacts.generation import Generation, Sample
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._generation_examples import ANSWER, generation, sample as example_sample

# Defaults chosen so that short normal answers never fire (tests/test_generate_checks.py proves it with
# hypothesis and with real tokenizers' sentences); each is a context option and a `generate` flag.
MAX_RUN = 8  # one token this many times in a row
LOOP_REPEATS = 4  # an n-gram of 2..MAX_PERIOD tokens this many times in a row
MAX_PERIOD = 8
SEQ_REP_N = 4
MAX_SEQ_REP = 0.5  # Welleck et al. 2019: 1 - unique 4-grams / 4-grams
MIN_DISTINCT = 0.3  # Li et al. 2016: unique bigrams / bigrams
MIN_TOKENS = 16  # seq-rep and distinct judge answers of at least this many tokens
OPTIONS = {"max_run": MAX_RUN, "loop_repeats": LOOP_REPEATS, "max_seq_rep": MAX_SEQ_REP, "min_distinct": MIN_DISTINCT,
           "min_tokens": MIN_TOKENS}


def longest_run(ids: Sequence[int]) -> tuple[int, int]:
    """(start, length) of the longest run of one token (the first such run); (0, 0) for no tokens."""
    best_start = best = start = 0
    for index in range(1, len(ids) + 1):
        if index == len(ids) or ids[index] != ids[start]:
            if index - start > best:
                best_start, best = start, index - start
            start = index
    return best_start, best


def longest_loop(ids: Sequence[int], max_period: int = MAX_PERIOD) -> tuple[int, int, int]:
    """(start, period, repeats) of the contiguous repetition of an n-gram of 2..max_period tokens covering
    the most tokens (whole repeats only); (0, 0, 0) when nothing repeats. A period that is a run of one
    token is `longest_run`'s."""
    best = (0, 0, 0)
    for period in range(2, max_period + 1):
        matched = 0  # length of the current stretch where ids[i] == ids[i - period]
        for index in range(period, len(ids) + 1):
            if index < len(ids) and ids[index] == ids[index - period]:
                matched += 1
                continue
            repeats = (matched + period) // period
            start = index - matched - period
            unit = ids[start:start + period]
            if repeats >= 2 and len(set(unit)) > 1 and repeats * period > best[1] * best[2]:
                best = (start, period, repeats)
            matched = 0
    return best


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def seq_rep(ids: Sequence[int], n: int = SEQ_REP_N) -> float:
    """Welleck et al. (2019) seq-rep-n: 1 - unique n-grams / n-grams (0.0 when there is no n-gram)."""
    grams = ngrams(ids, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct(ids: Sequence[int], n: int = 2) -> float:
    """Li et al. (2016) distinct-n: unique n-grams / n-grams (1.0 when there is no n-gram)."""
    grams = ngrams(ids, n)
    return len(set(grams)) / len(grams) if grams else 1.0


@dataclass(frozen=True)
class Repetition:
    start: int  # 0-based position of the repeated text
    unit: int  # tokens in the repeated unit
    count: int  # how many times it appears (in a row, for runs and loops)
    kind: str  # "run", "loop" or "frequent"
    run: int
    seq_rep: float
    distinct: float
    tokens: int


def degenerate(ids: Sequence[int], *, max_run: int = MAX_RUN, loop_repeats: int = LOOP_REPEATS,
               max_seq_rep: float = MAX_SEQ_REP, min_distinct: float = MIN_DISTINCT,
               min_tokens: int = MIN_TOKENS) -> Repetition | None:
    """The strongest evidence of degenerate repetition in `ids`, or None when no threshold is crossed."""
    run_start, run = longest_run(ids)
    loop_start, period, repeats = longest_loop(ids)
    rep, dist = seq_rep(ids), distinct(ids)
    common = dict(run=run, seq_rep=rep, distinct=dist, tokens=len(ids))
    run_fired, loop_fired = run >= max_run, repeats >= loop_repeats
    if run_fired and (not loop_fired or run >= period * repeats):
        return Repetition(start=run_start, unit=1, count=run, kind="run", **common)
    if loop_fired:
        return Repetition(start=loop_start, unit=period, count=repeats, kind="loop", **common)
    if len(ids) < min_tokens or (rep < max_seq_rep and dist > min_distinct):
        return None
    grams = ngrams(ids, SEQ_REP_N)
    gram, count = Counter(grams).most_common(1)[0]
    return Repetition(start=grams.index(gram), unit=SEQ_REP_N, count=count, kind="frequent", **common)


def answer_ids(sample: Sample, stop_ids: Iterable[int]) -> list[int]:
    """The generated ids without a final end-of-sequence token."""
    ids = list(sample.token_ids)
    return ids[:-1] if ids and ids[-1] in set(stop_ids) else ids


def thresholds(context: Context) -> dict[str, float]:
    return {name: type(default)(context.option(name, default)) for name, default in OPTIONS.items()}


class DegenerateRepetition(Check):
    code = "LD501"
    title = "degenerate repetition with finite logits"
    artifact = "Generation"
    severity = Severity.ERROR
    rationale = """
    A model whose logits are perfectly finite can still answer `the the the the ...` or loop on a
    phrase: greedy decoding falls into a repetition loop when the model is undertrained, when the
    language model is fine but the image tokens it is conditioned on are garbage (a vision tower
    never loaded, a projector never trained: LLaVA-VL/LLaVA-NeXT#155 reports `ADM<层出<层出...` after a
    projector change), or when the checkpoint is simply broken. Unlike the NaN case (LD502, `!!!!`),
    nothing non-finite shows where to look. Measured on the generated ids: the longest run of one
    token, the longest contiguous loop of a 2-8-token n-gram, seq-rep-4 (Welleck et al. 2019:
    1 - unique 4-grams / 4-grams; human text is near 0) and distinct-2 (Li et al. 2016: unique bigrams
    / bigrams). The defaults (a run of 8, a loop repeated 4 times, seq-rep-4 >= 0.5 or distinct-2 <= 0.3
    on answers of 16+ tokens) never fire on normal short answers; each is an option (`generate
    --max-run`, `--loop-repeats`, `--max-seq-rep`, `--min-distinct`, `--min-tokens`). Samples whose
    logits went non-finite are LD502's and LD503's.
    """
    fix = """
    Read the "most likely cause" line of the report: the live checks on the same model say whether the
    vision tower (LD304) or the projector (LD305) was never loaded, LD504 whether the image reaches the
    answer at all. If the image path is healthy, the language model itself loops: check the checkpoint
    against its base (`llava-doctor audit --base`), the conversation template (`--conv-mode`), and the
    decoding settings the model was released with (repetition_penalty).
    """
    valid = (
        Example("a normal short answer", generation(ANSWER)),
        Example("a normal answer that says 'the' three times",
                generation((5, 6, 7, 5, 8, 9, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2))),
        Example("a number with a run of digits shorter than 8", generation((5, 6, 7, 7, 7, 7, 7, 7, 7, 9, 2))),
        Example("a run of id 0 from NaN logits is LD502's", generation((0,) * 12, nonfinite=range(1, 13))),
        Example("an empty answer", generation(())),
        Example("a short loop of 3 repeats", generation((5, 6, 5, 6, 5, 6, 9, 2))),
    )
    invalid = (
        Example("one finite token twelve times",
                generation((5,) * 12, pieces=(" the",) * 12), count=1,
                contains=("' the' 12 times in a row from step 1", "finite logits", "expected a varied answer")),
        Example("a two-token loop after a normal start",
                generation((42, 178) + (7, 9) * 6, pieces=("A", " red") + (" circle", " and") * 6), count=1,
                contains=("' circle and' 6 times in a row from step 3",)),
        Example("a long answer that keeps coming back to one phrase (seq-rep-4)",
                generation((20, 21, 22, 23, 24) * 2 + (30,) + (20, 21, 22, 23, 24) * 2 + (31,) + (20, 21, 22, 23, 24) * 2),
                count=1, contains=("' w20 w21 w22 w23' 6 times in the answer (first at step 1)", "seq-rep-4 0.55")),
        Example("one of two images",
                generation(samples=(example_sample(ANSWER), example_sample((5,) * 10, image="cat.jpg", pieces=("!",) * 10))),
                count=1, contains=("cat.jpg / 'Describe the image.': degenerate repetition with finite logits: '!' 10 times in a row",)),
    )

    def run(self, artifact: Generation, context: Context) -> Iterable[Finding]:
        limits = thresholds(context)
        for sample in artifact.samples:
            if sample.nonfinite_steps or sample.first_nonfinite is not None:
                continue
            ids = answer_ids(sample, artifact.eos_token_ids)
            found = degenerate(ids, **limits)
            if found is not None:
                yield self._finding(artifact, sample, found)

    def _finding(self, artifact: Generation, sample: Sample, found: Repetition) -> Finding:
        text = sample.span_text(found.start, found.unit)
        where = "in a row" if found.kind in ("run", "loop") else "times in the answer"
        evidence = f"{text!r} {found.count} times {where} from step {found.start + 1}" if found.kind != "frequent" \
            else f"{text!r} {found.count} {where} (first at step {found.start + 1})"
        metrics = (f"longest token run {found.run}, seq-rep-4 {found.seq_rep:.2f}, distinct-2 {found.distinct:.2f} "
                   f"over {found.tokens} tokens")
        return self.finding(
            f"{sample.label()}: degenerate repetition with finite logits: {evidence} ({metrics}); "
            "expected a varied answer",
            artifact=artifact.name, location=f"{sample.image}: step {found.start + 1}",
            observed={"repeated": text, "times": found.count, "seq_rep_4": round(found.seq_rep, 4),
                      "distinct_2": round(found.distinct, 4), "longest_run": found.run},
            expected="a varied answer", image=sample.image, prompt=sample.prompt, first_step=found.start + 1,
            repeated_text=text, repeated_ids=list(sample.token_ids[found.start:found.start + found.unit]),
            kind=found.kind)
