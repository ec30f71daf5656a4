"""LD102: no warning fires, but the labels differ from the answer spans."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example


def _clean():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat .", "black and white ."), record("s2", "yes .")], "v1")


def _chatml_with_bos_tokenizer():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat .", "black and white .")], "chatml_direct")


class SupervisionDrift(Check):
    code = "LD102"
    title = "supervision drift: trained tokens differ from the assistant answers"
    artifact = "Dataset"
    severity = Severity.WARNING
    rationale = """
    The training code's per-round arithmetic can be off by one without the mismatch check noticing
    (the errors of two rounds cancel, or the code has no check at all, like LLaVA-NeXT's
    preprocess_qwen/llama3). Then the first answer token is masked, the end-of-turn token
    (`</s>`, `<|im_end|>`, `<|eot_id|>`) is never learned (the model does not stop), or prompt
    tokens are trained (lm-sys/FastChat#2494: first token of round 2 masked by mistake). The
    oracle finds the answers by character offsets in the rendered text, independently of the
    training code's arithmetic, and every token where the two disagree is named. Role headers of
    assistant turns and the ids LLaVA-NeXT unmasks on purpose are not counted.
    """
    fix = (
        "Use a template whose separators the tokenizer keeps intact (see LD103 / --suggest), or correct the "
        "recipe's offsets for this tokenizer."
    )
    valid = (Example("v1 on a SentencePiece-like tokenizer", _clean),)
    invalid = (
        Example("chatml_direct arithmetic on a tokenizer with BOS", _chatml_with_bos_tokenizer, count=1,
                contains=("sample s1", "end of turn not learned", "<|im_end|>")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        for a in artifact.analyses():
            if not a.drifts:
                continue
            sid = a.sample.id
            first = a.drifts[0]
            by_kind: dict[str, list[str]] = {}
            for d in a.drifts:
                by_kind.setdefault(d.kind, []).append(repr(d.token))
            parts = "; ".join(f"{kind}: {', '.join(tokens[:4])}{' ...' if len(tokens) > 4 else ''}"
                              for kind, tokens in by_kind.items())
            yield self.finding(
                f"sample {sid}: no warning, but {len(a.drifts)} token label(s) differ from the answers from round "
                f"{first.round} on ({parts}); trained {a.result.supervised} tokens, answers have {a.oracle.supervised}",
                artifact=artifact.name, location=f"sample {sid}", observed=a.result.supervised,
                expected=a.oracle.supervised, sample=sid, index=a.sample.index, round=first.round,
                position=first.position, kinds=sorted(by_kind), template=a.result.template, recipe=artifact.recipe,
                group=f"no warning, but the trained tokens differ from the answers ({', '.join(sorted(by_kind))}); "
                      f"cause: {a.cause or 'unclassified'}",
            )
