"""Generation records for the LD5xx checks' examples (built in memory, no torch)."""
from __future__ import annotations

from typing import Callable, Sequence

from llava_doctor.artifacts.generation import Generation, ImageProbe, NeutralAnswer, NonFinite, Sample, StepHealth

PROMPT_IDS = (1, 42, 83, 91, 4, 5, 68)
ANSWER = (42, 178, 161, 111, 51, 130, 138, 2)  # "A red circle at the top left." + </s>
ANSWER_PIECES = ("A", " red", " circle", " at", " the", " top", " left.", "</s>")
PROBE = ImageProbe(tower="model.vision_tower", projector="model.mm_projector", sequence="model.layers.0",
                   tower_finite=True, projector_finite=True, projector_rms=2.5, text_embedding_rms=0.03)


def neutral(*, same: bool = False, tv: float = 0.4, tower: float = 1.1, projector: float = 1.0,
            sequence: float = 1.0, ids: Sequence[int] = ANSWER) -> tuple[NeutralAnswer, ...]:
    """The blank and noise answers: different from the image's (default), or the same (`same=True`)."""
    return tuple(NeutralAnswer(image=name, token_ids=tuple(ids) if same else tuple(ids[:1]) + (151,),
                               text="" if same else "A yellow", same_output=same, first_step_tv=tv / 2, max_tv=tv,
                               tower_change=tower, projector_change=projector, sequence_change=sequence)
                 for name in ("blank", "noise"))


def sample(token_ids: Sequence[int] = ANSWER, *, nonfinite: Sequence[int] = (), module: str | None = None,
           module_step: int | None = None, value: str | None = None, text: str | None = None, token_zero: str = "!",
           pieces: Sequence[str] | None = None, neutral_answers: tuple[NeutralAnswer, ...] | None = None,
           probe: ImageProbe | None = PROBE, image: str = "image.png", prompt: str = "Describe the image.") -> Sample:
    bad = set(nonfinite)
    if pieces is None:
        pieces = ANSWER_PIECES if tuple(token_ids) == ANSWER else tuple(
            token_zero if t == 0 else f" w{t}" for t in token_ids)
    return Sample(
        image=image, prompt=prompt, prompt_ids=PROMPT_IDS, token_ids=tuple(token_ids),
        text=text if text is not None else "".join(pieces).replace("</s>", "").strip(),
        steps=tuple(StepHealth(finite=step not in bad, nan=step in bad) for step in range(1, len(token_ids) + 1)),
        pieces=tuple(pieces), first_nonfinite=NonFinite(module, module_step or 1, value or "nan") if module else None,
        neutral=neutral(ids=token_ids) if neutral_answers is None else neutral_answers, probe=probe)


def generation(token_ids: Sequence[int] = ANSWER, *, nonfinite: Sequence[int] = (), dtype: str = "float16",
               token_zero: str = "!", module: str | None = None, module_step: int | None = None,
               value: str | None = None, text: str | None = None, pieces: Sequence[str] | None = None,
               neutral_answers: tuple[NeutralAnswer, ...] | None = None, probe: ImageProbe | None = PROBE,
               samples: Sequence[Sample] = ()) -> Callable[[], Generation]:
    """A builder of a Generation with one sample (or `samples`) whose logits were non-finite at the 1-based
    steps `nonfinite`."""

    def build() -> Generation:
        records = tuple(samples) or (sample(token_ids, nonfinite=nonfinite, module=module, module_step=module_step,
                                            value=value, text=text, token_zero=token_zero, pieces=pieces,
                                            neutral_answers=neutral_answers, probe=probe),)
        return Generation(name="checkpoints/llava-tiny", dtype=dtype, token_zero=token_zero, samples=records,
                          family="llava-original", device="cpu", eos_token_ids=(2,), max_new_tokens=32)

    return build
