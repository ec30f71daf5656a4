"""LD405: the first logged loss is implausible for the model: above a fresh head's, or a loaded model at ln(V)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from llava_doctor.artifacts.training_log import LogStep, RunModel, TrainingLog
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

FIRST_STEPS = 100  # the first logged entry is judged when it is logged by this step (a resumed run's log starts later)
LOADED_FRACTION = 0.9  # a loaded model at or above this fraction of ln(V) predicts like a fresh head


@dataclass(frozen=True)
class FirstLossBand:
    """What the first loss of a model may be. `uniform` = ln(V), the loss of a head that predicts
    every token equally; `ceiling`: above it the logits are far larger than a fresh head's;
    `loaded_limit`: a loaded (pretrained) model starts below it (None when not known to be loaded)."""

    uniform: float
    fresh_excess: float
    ceiling: float
    loaded_limit: float | None


def first_loss_band(model: RunModel) -> FirstLossBand | None:
    """The band for `model`, or None when its vocabulary size is unknown.

    A fresh head gives logits z = W h with W ~ N(0, r^2) (r = initializer_range) and |h| ~ sqrt(d)
    after the final norm, so z ~ N(0, r^2 d) and the expected cross-entropy is ln V + r^2 d / 2
    (0.8 nats for a 7B Llama: r 0.02, d 4096). The ceiling adds max(3, 0.3 ln V) nats to that.
    """
    if not model.vocab_size or model.vocab_size < 2:
        return None
    uniform = math.log(model.vocab_size)
    excess = 0.0
    if model.initializer_range and model.hidden_size:
        excess = model.initializer_range ** 2 * model.hidden_size / 2
    ceiling = uniform + excess + max(3.0, 0.3 * uniform)
    loaded = LOADED_FRACTION * uniform if model.pretrained else None
    return FirstLossBand(uniform=uniform, fresh_excess=excess, ceiling=ceiling, loaded_limit=loaded)


def first_logged_step(log: TrainingLog) -> LogStep | None:
    """The run's first logged training loss, if this log holds it and it is a finite, non-zero number."""
    if not log.steps:
        return None
    first = log.steps[0]
    if first.index != 0 or (first.step is not None and first.step > FIRST_STEPS):
        return None
    if first.loss is None or not math.isfinite(first.loss) or first.loss == 0.0:  # LD402's / LD401's
        return None
    return first


def _log(loss: float, *, vocab: int | None = 32000, pretrained: bool | None = False, step: int = 1,
         hidden: int | None = 4096, init: float | None = 0.02, model: bool = True):
    def build():
        run_model = RunModel(vocab, pretrained, hidden, init, source="config.json beside the log") if model else None
        steps = (LogStep(index=0, step=step, loss=loss, grad_norm=3.0), LogStep(index=1, step=step + 10, loss=loss * 0.8))
        return TrainingLog(name="trainer_state.json", steps=steps, source="trainer_state", model=run_model)

    return build


class FirstLossImplausible(Check):
    code = "LD405"
    title = "first-step loss implausible for the model (random init should be near ln V)"
    artifact = "TrainingLog"
    severity = Severity.ERROR
    rationale = """
    Before any training, a head that predicts every token equally has loss ln(V) (10.37 for
    Llama's 32000 tokens, 11.93 for Qwen2's 151646). A freshly initialised head is close to that:
    its logits are W h with W ~ N(0, initializer_range^2), so the expected loss is ln V + r^2 d / 2
    (d the hidden size; +0.8 nats for a 7B Llama). Two first losses are wrong. Far ABOVE that
    (by more than max(3, 0.3 ln V) nats): the logits are much larger than any initialiser gives -
    uninitialised memory (a tower or LLM "loaded" into meta/empty tensors, the `delay_load` trap),
    weights loaded in the wrong dtype or scale, a loss summed instead of averaged, or scaled by the
    gradient-accumulation steps. At or ABOVE 0.9 ln V for a model loaded with `from_pretrained`: a
    pretrained LLM predicts text far better than uniform (a LLaVA stage starts at 1-3 nats, a
    projector pre-training below ln V), so a first loss at ln V means the LLM or its head was
    randomly initialised - keys that did not match (a transformers-5 ZeRO-3 save read by 4.x,
    `ignore_mismatched_sizes=True`), a ZeRO-3 model loaded without gathering, or the wrong
    checkpoint; logs like `{'loss': 10.3388, ...}` at epoch 0.06 (haotian-liu/LLaVA#878) sit at
    ln 32000 = 10.37. Live, the callback reads V from the model's output embedding (resized
    embeddings included) and whether it was loaded from its config's `_name_or_path`, and asks the
    Trainer to log step 1; after the fact, `llava-doctor logs` reads the config.json saved beside
    trainer_state.json (transformers 4.x writes `_name_or_path` there, 5.x does not). The first
    logged entry is judged when it is logged by step 100: a window mean over the first steps is
    still above the first step's loss for a loaded model and still above the ceiling when one step
    was. Without the vocabulary size nothing is judged, and the report says so.
    """
    fix = """
    Above the ceiling: check the weights for NaN/garbage (`llava-doctor inspect` / `audit --deep`,
    LD204/LD304), the loss reduction and the gradient-accumulation scaling. A loaded model at ln V:
    check the load report for missing/unexpected keys (LD202, LD208), load ZeRO-3 weights inside
    `GatheredParameters`, and compare with the base checkpoint (`audit --base`).
    """
    valid = (
        Example("fresh head near ln V", _log(10.6)),
        Example("loaded model far below ln V", _log(1.9, pretrained=True)),
        Example("projector pre-training of a loaded LLM", _log(6.8, pretrained=True)),
        Example("a resumed run's log starts later", _log(40.0, step=5000)),
        Example("NaN first loss is LD402's", _log(float("nan"))),
    )
    invalid = (
        Example("garbage logits: far above ln V", _log(87.3), count=1,
                contains=("first logged loss 87.3 at step 1 is above 14.30", "ln(32000) = 10.37 plus 3.93 nats")),
        Example("loaded model at ln V (LLaVA#878)", _log(10.3388, pretrained=True, step=10), count=1,
                contains=("first logged loss 10.34 at step 10 is 100% of ln(32000) = 10.37",
                          "as if its LLM or head were randomly initialised")),
        Example("no vocabulary size: not judged", _log(2.3, model=False), count=1, contains=("not judged",)),
        Example("at ln V, unknown whether loaded", _log(10.4, pretrained=None), count=1,
                contains=("unknown whether the weights were loaded",)),
    )

    def run(self, artifact: TrainingLog, context: Context) -> Iterable[Finding]:
        first = first_logged_step(artifact)
        if first is None:
            return
        model = artifact.model
        band = first_loss_band(model) if model is not None else None
        where = dict(artifact=artifact.name, location=first.where, first_step=first.step, line=first.line)
        if band is None:
            why = (model.note if model is not None and model.note else
                   "no config.json beside the log gives the vocabulary size")
            yield self.finding(f"first logged loss {first.loss:.4g} at {first.where} not judged: {why}",
                               severity=Severity.INFO, observed=first.loss, **where)
            return
        uniform = f"ln({model.vocab_size}) = {band.uniform:.2f}"
        if first.loss > band.ceiling:
            yield self.finding(
                f"first logged loss {first.loss:.4g} at {first.where} is above {band.ceiling:.2f} ({uniform} plus "
                f"{band.ceiling - band.uniform:.2f} nats): the logits are far larger than a fresh head's (garbage or "
                f"uninitialised weights, or a summed/scaled loss); expected at most {band.ceiling:.2f}",
                observed=first.loss, expected=f"<= {band.ceiling:.2f}", vocab_size=model.vocab_size, **where)
        elif band.loaded_limit is not None and first.loss >= band.loaded_limit:
            yield self.finding(
                f"first logged loss {first.loss:.4g} at {first.where} is {first.loss / band.uniform:.0%} of {uniform} "
                f"for a model loaded from pretrained weights ({model.source}): it predicts like a fresh head, as if its "
                f"LLM or head were randomly initialised; expected below {band.loaded_limit:.2f}",
                observed=first.loss, expected=f"< {band.loaded_limit:.2f}", vocab_size=model.vocab_size, **where)
        elif model.pretrained is None and first.loss >= LOADED_FRACTION * band.uniform:
            yield self.finding(
                f"first logged loss {first.loss:.4g} at {first.where} is at {uniform}: right for a fresh head, a failed "
                f"load for a pretrained model; unknown whether the weights were loaded ({model.note or model.source})",
                severity=Severity.INFO, observed=first.loss, vocab_size=model.vocab_size, **where)
