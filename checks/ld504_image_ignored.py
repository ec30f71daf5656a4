"""LD504: the answer does not depend on the image (the same with a blank and a noise image)."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from llava_doctor.artifacts.generation import Generation, Sample
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._generation_examples import ANSWER, PROBE, generation, neutral, sample as example_sample

MAX_TV = 0.05  # total variation between next-token distributions at every shared step
CONSTANT = 1e-3  # relative L2 change of a part's output below which it "does not change with the image"
NEAR_ZERO = 1e-2  # projector RMS below this fraction of the text embeddings' RMS
OPTIONS = {"image_max_tv": MAX_TV, "image_constant": CONSTANT, "image_near_zero": NEAR_ZERO}


def image_blind(sample: Sample, max_tv: float = MAX_TV) -> bool:
    """Every neutral image gave the same greedy answer, with next-token distributions within `max_tv`."""
    return bool(sample.neutral) and all(
        n.same_output and (n.max_tv is None or n.max_tv <= max_tv) for n in sample.neutral)


def _largest(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if len(known) == len(values) and known else None


def silent_part(sample: Sample, *, constant: float = CONSTANT, near_zero: float = NEAR_ZERO) -> tuple[str, str]:
    """(part, why) for the first part of the image path (tower -> projector -> splice -> LLM) that does not
    carry the image, from what the forward hooks saw on the first step."""
    probe, neutrals = sample.probe, sample.neutral
    if probe is None or (probe.tower is None and probe.projector is None):
        return "unknown", "the vision tower and projector modules were not found, so which part is silent is not known"
    tower = _largest([n.tower_change for n in neutrals])
    projector = _largest([n.projector_change for n in neutrals])
    sequence = _largest([n.sequence_change for n in neutrals])
    if probe.tower_finite is False:
        return "vision tower", f"the vision tower's output ({probe.tower}) is non-finite"
    if probe.tower is not None and tower is None and probe.tower_finite is None:
        return "vision tower", f"the vision tower ({probe.tower}) never ran"
    if tower is not None and tower <= constant:
        return "vision tower", (f"the vision tower's output ({probe.tower}) is constant: it changes by at most "
                                f"{tower:.2g} (relative) between the image and the neutral images")
    if probe.projector_finite is False:
        return "projector", f"the projector's output ({probe.projector}) is non-finite"
    if probe.projector_rms is not None and probe.text_embedding_rms and probe.projector_rms <= near_zero * probe.text_embedding_rms:
        return "projector", (f"the projector's output ({probe.projector}) is near zero: RMS {probe.projector_rms:.3g} "
                             f"against {probe.text_embedding_rms:.3g} for the text embeddings")
    if projector is not None and projector <= constant:
        return "projector", (f"the projector's output ({probe.projector}) is constant: it changes by at most "
                             f"{projector:.2g} (relative) between the image and the neutral images")
    if sequence is not None and sequence <= constant:
        return "splice", (f"the image features never reach the language model: its input sequence ({probe.sequence}) "
                          f"changes by at most {sequence:.2g} between the image and the neutral images")
    changes = ", ".join(f"{name} {value:.2g}" for name, value in (("tower", tower), ("projector", projector),
                                                                  ("input sequence", sequence)) if value is not None)
    return "language model", ("the image features reach the language model but do not change its answer "
                              f"(relative change {changes or 'not measured'})")


class ImageIgnored(Check):
    code = "LD504"
    title = "output does not depend on the image"
    artifact = "Generation"
    severity = Severity.ERROR
    rationale = """
    A LLaVA whose vision tower was never loaded, whose tower holds a constant or garbage output, whose
    projector is zero (never received its `mm_projector.bin`), or whose image features are never
    spliced into the sequence, answers fluently and wrongly: the language model describes an image it
    cannot see (LLaVA-VL/LLaVA-NeXT#285 "!!!!" was the NaN end of the same delay_load trap;
    haotian-liu/LLaVA#1345 "Some weights ... are newly initialized: ['model.mm_projector.bias',
    'model.mm_projector.weight']"). Nothing errors. The test is direct: the same prompt with the
    given image, with a blank (flat grey) image and with a noise image of the same size; if every
    greedy answer is the same and the next-token distributions stay within a total variation of
    0.05 (`--image-max-tv`) at every step, the image does not reach the answer. Forward hooks on
    the first step say which part is silent: the tower's output non-finite or constant (a relative
    change below 1e-3, `--image-constant`), the projector's output non-finite, near zero (RMS below
    1% of the text embeddings', `--image-near-zero`) or constant, the LLM's input sequence the same
    for every image (features never spliced), or the features reaching the LLM and being ignored.
    A prompt that does not ask about the image can fire this check honestly: ask about the image.
    Samples whose logits went non-finite are LD502's and LD503's (NaN answers id 0 whatever the image).
    """
    fix = """
    Follow the part named: a silent tower is a tower never loaded (`delay_load`: load it after
    from_pretrained, `vision_tower.load_model()`; LD304 says whether it is the base tower); a zero or
    constant projector was never given its weights (load `mm_projector.bin` /
    `--pretrain_mm_mlp_adapter`; LD305); features never spliced means the image token of the prompt
    does not match the model's (`image_token_index`, `<image>` in the template). An LLM that ignores
    present features was not trained with images (a pretrain stage that did not run).
    """
    valid = (
        Example("the answer changes with the image", generation(ANSWER)),
        Example("same answer but the next-token distributions differ (the image matters)",
                generation(ANSWER, neutral_answers=neutral(same=True, tv=0.3))),
        Example("no neutral comparison was made", generation(ANSWER, neutral_answers=())),
        Example("NaN logits answer the same whatever the image (LD502's)",
                generation((0,) * 6, nonfinite=range(1, 7), neutral_answers=neutral(same=True, tv=0.0, ids=(0,) * 6))),
        Example("one neutral image changes the answer",
                generation(ANSWER, neutral_answers=neutral(same=True, tv=0.01)[:1] + neutral()[1:])),
    )
    invalid = (
        Example("projector zeroed: near-zero output",
                generation(ANSWER, neutral_answers=neutral(same=True, tv=0.0, projector=0.0, sequence=0.0),
                           probe=replace(PROBE, projector_rms=0.0)),
                count=1, contains=("the same answer with a blank and a noise image", "'A red circle at the top left.'",
                                   "projector's output (model.mm_projector) is near zero", "RMS 0")),
        Example("a constant tower",
                generation(ANSWER, neutral_answers=neutral(same=True, tv=1e-6, tower=0.0, projector=0.0, sequence=0.0)),
                count=1, contains=("vision tower's output (model.vision_tower) is constant",)),
        Example("features never spliced",
                generation(ANSWER, neutral_answers=neutral(same=True, tv=0.0, sequence=0.0)), count=1,
                contains=("never reach the language model",)),
        Example("the LLM ignores present features",
                generation(ANSWER, neutral_answers=neutral(same=True, tv=0.001)), count=1,
                contains=("reach the language model but do not change its answer", "tower 1.1")),
        Example("a non-finite tower output",
                generation(ANSWER, neutral_answers=neutral(same=True, tv=0.0),
                           probe=replace(PROBE, tower_finite=False)),
                count=1, contains=("vision tower's output (model.vision_tower) is non-finite",)),
        Example("one of two images",
                generation(samples=(example_sample(ANSWER), example_sample(ANSWER, image="cat.jpg",
                                                           neutral_answers=neutral(same=True, tv=0.0, sequence=0.0)))),
                count=1, contains=("cat.jpg / 'Describe the image.'",)),
    )

    def run(self, artifact: Generation, context: Context) -> Iterable[Finding]:
        max_tv = float(context.option("image_max_tv", MAX_TV))
        constant = float(context.option("image_constant", CONSTANT))
        near_zero = float(context.option("image_near_zero", NEAR_ZERO))
        for sample in artifact.samples:
            if sample.nonfinite_steps or not image_blind(sample, max_tv):
                continue  # NaN logits answer id 0 whatever the image: LD502/LD503's
            part, why = silent_part(sample, constant=constant, near_zero=near_zero)
            tv = max((n.max_tv for n in sample.neutral if n.max_tv is not None), default=None)
            first = max((n.first_step_tv for n in sample.neutral if n.first_step_tv is not None), default=None)
            distances = "" if tv is None else f", next-token distributions within total variation {tv:.2g} " \
                                              f"(first step {first:.2g})"
            yield self.finding(
                f"{sample.label()}: the same answer with a blank and a noise image as with the image "
                f"({sample.text!r}{distances}): the image does not reach the answer; {why}; "
                "expected an answer that depends on the image",
                artifact=artifact.name, location=f"{sample.image}: {part}",
                observed={"same_output": True, "max_total_variation": tv, "silent_part": part},
                expected="an answer that depends on the image", image=sample.image, prompt=sample.prompt,
                silent_part=part, neutral_images=[n.image for n in sample.neutral])
