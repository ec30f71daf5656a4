"""Generation records for the LD5xx checks' examples (built in memory, no torch)."""
from __future__ import annotations

from typing import Callable, Sequence

from llava_doctor.artifacts.generation import Generation

PROMPT_IDS = (1, 42, 83, 91, 4, 5, 68)
ANSWER = (42, 178, 161, 111, 51, 130, 138, 2)


def generation(token_ids: Sequence[int] = ANSWER, *, nonfinite: Sequence[int] = (), dtype: str = "float16",
               token_zero: str = "!", module: str | None = None, module_step: int | None = None,
               value: str | None = None, text: str | None = None) -> Callable[[], Generation]:
    """A builder of a Generation whose logits were non-finite at the 1-based steps `nonfinite`."""

    def build() -> Generation:
        bad = set(nonfinite)
        return Generation(
            name="checkpoints/llava-tiny", prompt="Describe the image.", prompt_ids=PROMPT_IDS,
            token_ids=tuple(token_ids),
            text=text if text is not None else " ".join(token_zero if t == 0 else f"w{t}" for t in token_ids),
            step_logits_finite=tuple(step not in bad for step in range(1, len(token_ids) + 1)),
            dtype=dtype, token_zero=token_zero, first_nonfinite_module=module,
            first_nonfinite_step=module_step if module else None, first_nonfinite_value=value if module else None)

    return build
