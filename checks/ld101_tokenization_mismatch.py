"""LD101: the training code's per-round arithmetic disagrees with the full tokenization."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding
from llava_doctor.registry import Check, Context, Example


def _clean():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat .", "black and white ."), record("s2", "yes .", image=False)], "v1")


def _pad_is_eos():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat .", "black and white ."), record("s2", "yes .")], "v1", pad_token="</s>")


def _separator_in_message():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat </s> USER: what is this ?", "no ."), record("s2", "yes .")], "v1")


def _roles_out_of_order():
    from llava_doctor.templates.examples import dataset

    turns = [{"from": "human", "value": "<image>\nwhat is this ?"}, {"from": "human", "value": "what ?"},
             {"from": "gpt", "value": "a cat ."}]
    return dataset([{"id": "bad", "image": "x.jpg", "conversations": turns}], "v1")


def _unreadable_record():
    from llava_doctor.templates.examples import dataset

    return dataset([{"id": "nope", "image": "x.jpg"}], "v1")


class TokenizationMismatch(Check):
    code = "LD101"
    title = "tokenization mismatch: the training code will drop (or fail on) the sample"
    artifact = "Dataset"
    rationale = """
    LLaVA's preprocess_v1 / preprocess_mpt / preprocess_llama_2 tokenize every round on its own, add
    the lengths up (cur_len, starting at 1 for an assumed BOS, with hard-coded -1/-2 and, on main,
    `legacy` +-1 corrections) and compare the sum with the number of non-pad tokens of the whole
    conversation (total_len). When they differ the code prints
    `WARNING: tokenization mismatch: X vs. Y. (ignored)` and sets every label of the sample to -100:
    the sample silently trains on nothing, and when it happens to every sample the loss is 0
    (haotian-liu/LLaVA#661, #1166 `102 vs. 104`, #1706, #1710). The prediction runs the chosen
    codebase's arithmetic with the real tokenizer, so X and Y are exactly what LLaVA prints; the
    cause is classified (BOS assumption, separator tokenized differently after `</s>` under
    `legacy`/tokenizers>=0.14, pad equal to eos/unk, separator text inside a message, wrong
    template, empty answer). Samples on which the training code raises (no `legacy` attribute, a
    None pad token, roles that do not alternate, missing fields) are reported here too.
    """
    fix = (
        "Use the template that matches the LLM (`llava-doctor data --suggest` lists the ones that drop nothing), "
        "keep pad_token distinct from eos, or fix the sample's text."
    )
    valid = (Example("v1 with a SentencePiece-like tokenizer", _clean),)
    invalid = (
        Example("pad token equal to eos", _pad_is_eos, count=2, contains=("vs.", "pad equal to eos")),
        Example("separator inside a message", _separator_in_message, count=1,
                contains=("sample s1", "separator text '</s>' inside a message")),
        Example("roles out of order", _roles_out_of_order, count=1, contains=("AssertionError",)),
        Example("record without conversations", _unreadable_record, count=1, contains=("'conversations' is missing",)),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        for problem in artifact.problems:
            yield self.finding(
                f"sample {problem.sample}: unreadable record: {problem.message} (LLaVA's dataset raises KeyError/TypeError)",
                artifact=artifact.name, location=f"sample {problem.sample}", sample=problem.sample,
            )
        for a in artifact.analyses():
            r, sid = a.result, a.sample.id
            where = f"sample {sid}"
            if r.crash:
                yield self.finding(
                    f"sample {sid}: the training code ({artifact.recipe} {r.function or 'preprocess'}, template "
                    f"{r.template}) raises instead of training: {r.crash}",
                    artifact=artifact.name, location=where, sample=sid, crash=r.crash,
                )
                continue
            if r.mismatch is None:
                continue
            cur, total = r.mismatch
            round_txt = f"round {a.drift_round}" if a.drift_round else "the sample"
            yield self.finding(
                f"sample {sid}: LLaVA will print `{r.warning}` and mask all labels ({round_txt}; cause: {a.cause or 'unclassified'})",
                artifact=artifact.name, location=where, observed=cur, expected=total, sample=sid, cur_len=cur,
                total_len=total, round=a.drift_round, cause=a.cause, template=r.template, recipe=artifact.recipe,
            )
