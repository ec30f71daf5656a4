"""Which set-ups fit a tokenizer: the (recipe, template, pad token) combinations under which no
well-formed sample is dropped, crashes, drifts or stays unverified - answered as options that work
on the command line (``--recipe llava-next --template qwen_2``).

Columns of a fit:
- dropped: LLaVA prints ``WARNING: tokenization mismatch`` and masks the whole sample;
- crashed: the training code raises on the sample;
- drifted: no warning, but the trained tokens differ from the answers (LD102);
- unverified: the oracle could not line the sample's tokens up with its text (the tokenizer gives
  no character offsets, or the training code builds a text the template does not render, like the
  generic ``preprocess`` of v0); nothing proves those samples right, so a set-up with unverified
  samples is never called a fit.
Samples whose conversation is malformed (one-sided, out of order: a data problem) count for no
set-up: no template fixes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .analysis import SampleAnalysis, SampleInput, analyze
from .codebase import CODEBASES, SETUP_VERSIONS, templates_of
from .conversation import SepStyle
from .recipes import shared_setup
from .tokenize import Encoder, Verifier

UNVERIFIED_HELP = ("unverified = samples whose tokens the oracle could not line up with the text (no character "
                   "offsets from this tokenizer, or the training code builds a text the template does not render); "
                   "a set-up fits only when every well-formed sample is verified clean")


@dataclass(frozen=True)
class TemplateFit:
    template: str
    samples: int
    dropped: int
    crashed: int
    drifted: int
    supervised: int
    unverified: int = 0  # samples whose token ids the oracle could not line up with the recipe's
    malformed: int = 0  # samples with a data problem (not counted against the template)
    recipe: str = ""
    pad_token: str | None = None  # None: the pad the recipe's train.py sets up

    @property
    def clean(self) -> bool:
        return self.samples > self.malformed and not (self.dropped or self.crashed or self.drifted or self.unverified)

    @property
    def bad(self) -> int:
        return self.dropped + self.crashed + self.drifted

    def options(self) -> str:
        """The command-line options of this set-up."""
        parts = [f"--template {self.template}"]
        if self.recipe:
            parts.append(f"--recipe {self.recipe}")
        if self.pad_token is not None:
            parts.append(f"--pad-token '{self.pad_token}'")
        return " ".join(parts)


def summarize(template: str, analyses: Sequence[SampleAnalysis], *, recipe: str = "",
              pad_token: str | None = None) -> TemplateFit:
    """Counts over the well-formed samples (a malformed conversation is a data problem, no template's fault)."""
    sound = [a for a in analyses if not a.problem]
    return TemplateFit(
        template,
        len(analyses),
        sum(1 for a in sound if a.result.mismatch is not None),
        sum(1 for a in sound if a.result.crash),
        sum(1 for a in sound if a.drifts),
        sum(a.result.supervised for a in analyses),
        sum(1 for a in sound if not a.result.crash and (a.oracle is None or not a.ids_agree)),
        len(analyses) - len(sound),
        recipe,
        pad_token,
    )


def candidate_templates(recipe: str) -> list[str]:
    """Templates the codebase defines under their own name (plain is for 2-turn pretraining data)."""
    return sorted(name for name, t in templates_of(recipe).items()
                  if t.sep_style is not SepStyle.PLAIN and name != "default" and name not in SETUP_VERSIONS)


def pad_candidates(tokenizer: Any) -> list[str | None]:
    """None (the recipe's own set-up) and the tokenizer's own pad / eos / unk tokens."""
    out: list[str | None] = [None]
    for token in (getattr(tokenizer, "pad_token", None), getattr(tokenizer, "eos_token", None),
                  getattr(tokenizer, "unk_token", None)):
        if isinstance(token, str) and token not in out:
            out.append(token)
    return out


def _fit(samples: Sequence[SampleInput], tokenizer: Any, recipe: str, template: str, pad: str | None,
         max_length: int | None, encoders: dict[int, Encoder]) -> TemplateFit:
    configured = shared_setup(tokenizer, recipe, template, pad, max_length=max_length)
    key = id(getattr(configured, "base", configured))
    encode = encoders.get(key)
    if encode is None:
        encode = encoders[key] = Encoder(configured)
    else:
        encode = encode.with_tokenizer(configured)
    # every candidate sample is also run on the exact path: a derived round length is only as good as the proof that
    # this tokenizer concatenates (tokenizers 0.15 prepends `▁` after special tokens where 0.19+ does not)
    analyses = analyze(samples, configured, template, recipe, max_length=max_length, encoder=encode,
                       verifier=Verifier(first=len(samples)))
    return summarize(template, analyses, recipe=recipe, pad_token=pad)


def fitting_templates(samples: Sequence[SampleInput], tokenizer: Any, recipe: str, *, pad_token: str | None = None,
                      max_length: int | None = None, limit: int = 64) -> list[TemplateFit]:
    """Every candidate template of `recipe` tried on the first `limit` samples with the tokenizer set up for it."""
    subset = list(samples[:limit])
    encoders: dict[int, Encoder] = {}
    return [_fit(subset, tokenizer, recipe, name, pad_token, max_length, encoders) for name in candidate_templates(recipe)]


def fitting_setups(samples: Sequence[SampleInput], tokenizer: Any, recipe: str, *, pad_token: str | None = None,
                   max_length: int | None = None, limit: int = 64, recipes: Sequence[str] = CODEBASES,
                   tokenizer_for: Callable[[str], Any] | None = None, everywhere: bool = True) -> list[TemplateFit]:
    """Every (recipe, template, pad) set-up tried on the first `limit` samples, the run's own recipe
    and pad first. Other pads are tried only where the run's pad leaves no template that fits, and
    (unless `everywhere`) other recipes only where the run's own recipe leaves none.
    `tokenizer_for(recipe)` gives the tokenizer another recipe's train.py would load (its class can
    differ under transformers 4); without it every recipe is tried with `tokenizer`."""
    subset = list(samples[:limit])
    encoders: dict[int, Encoder] = {}
    order = [recipe] + [r for r in recipes if r != recipe]
    fits: list[TemplateFit] = []
    for name in order:
        if not everywhere and any(f.clean for f in fits):
            break
        tokenizer = tokenizer_for(name) if tokenizer_for is not None and name != recipe else tokenizer
        own = [_fit(subset, tokenizer, name, t, pad_token, max_length, encoders) for t in candidate_templates(name)]
        fits += own
        if any(f.clean for f in own):
            continue
        for pad in pad_candidates(tokenizer):
            if pad == pad_token:
                continue
            fits += [_fit(subset, tokenizer, name, t, pad, max_length, encoders) for t in candidate_templates(name)]
    return fits


def ranked_options(fits: Sequence[TemplateFit], recipe: str, pad_token: str | None, template: str,
                   limit: int = 4) -> list[str]:
    """Command-line options of the clean set-ups: every template that fits with the run's own recipe and
    pad; when there is none, the closest others (another pad, then another recipe), at most `limit`."""
    clean = [f for f in fits if f.clean and not (f.template == template and f.recipe == recipe and
                                                   f.pad_token == pad_token)]

    def distance(f: TemplateFit) -> tuple:
        return (f.recipe != recipe, f.pad_token != pad_token, f.template)

    same = [f for f in clean if f.recipe == recipe and f.pad_token == pad_token]
    if same:
        return [f"--template {f.template}" for f in sorted(same, key=lambda f: f.template)]
    out: list[str] = []
    for f in sorted(clean, key=distance):
        text = " ".join(p for p in (f"--template {f.template}",
                                    f"--recipe {f.recipe}" if f.recipe != recipe else "",
                                    f"--pad-token '{f.pad_token}'" if f.pad_token != pad_token and f.pad_token else "")
                        if p)
        if text not in out:
            out.append(text)
        if len(out) >= limit:
            break
    return out


def fit_message(template: str, recipe: str, bad: int, fit: TemplateFit, good: Sequence[str]) -> str:
    listed = "; ".join(f"`{g}`" for g in good) if good else "none of the known set-ups (recipes x templates x pad tokens)"
    sound = fit.samples - fit.malformed
    malformed = f", {fit.malformed:,} malformed conversations not counted (data problems)" if fit.malformed else ""
    return (f"template {template} does not fit this tokenizer under {recipe}: {bad:,} of {sound:,} well-formed samples "
            f"affected ({fit.dropped:,} dropped, {fit.crashed:,} crash, {fit.drifted:,} drift{malformed}); set-ups that "
            f"fit: {listed}")
