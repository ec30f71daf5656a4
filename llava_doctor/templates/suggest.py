"""Which templates fit a tokenizer: the ones under which no sample is dropped, crashes or drifts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .analysis import SampleAnalysis, SampleInput, analyze
from .conversation import TEMPLATES, SepStyle
from .recipes import resolve_template, shared_setup


@dataclass(frozen=True)
class TemplateFit:
    template: str
    samples: int
    dropped: int
    crashed: int
    drifted: int
    supervised: int
    unverified: int = 0  # samples whose token ids the oracle could not line up with the recipe's

    @property
    def clean(self) -> bool:
        return self.samples > 0 and not (self.dropped or self.crashed or self.drifted or self.unverified)


def summarize(template: str, analyses: Sequence[SampleAnalysis]) -> TemplateFit:
    return TemplateFit(
        template,
        len(analyses),
        sum(1 for a in analyses if a.result.mismatch is not None),
        sum(1 for a in analyses if a.result.crash),
        sum(1 for a in analyses if a.drifts),
        sum(a.result.supervised for a in analyses),
        sum(1 for a in analyses if not a.ids_agree),
    )


def candidate_templates(recipe: str) -> list[str]:
    """Templates the codebase defines under their own name (plain is for 2-turn pretraining data)."""
    out = []
    for name, t in sorted(TEMPLATES.items()):
        if t.sep_style is SepStyle.PLAIN or name == "default":
            continue
        used, note = resolve_template(recipe, name)
        if note is None and used.name == name:
            out.append(name)
    return out


def fitting_templates(samples: Sequence[SampleInput], tokenizer: Any, recipe: str, *, pad_token: str | None = None,
                      max_length: int | None = None, limit: int = 64) -> list[TemplateFit]:
    """Every candidate template tried on the first `limit` samples with the tokenizer set up for it."""
    subset = list(samples[:limit])
    fits = []
    for name in candidate_templates(recipe):
        configured = shared_setup(tokenizer, recipe, name, pad_token, max_length=max_length)
        fits.append(summarize(name, analyze(subset, configured, name, recipe, max_length=max_length)))
    return fits


def fit_message(template: str, recipe: str, bad: int, fit: TemplateFit, good: Sequence[str]) -> str:
    listed = ", ".join(good) if good else "none of the known templates"
    return (f"template {template} does not fit this tokenizer under {recipe}: {bad} of {fit.samples} samples affected "
            f"({fit.dropped} dropped, {fit.crashed} crash, {fit.drifted} drift); templates that fit: {listed}")
