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


def _text_log(*lines: str):
    def build():
        from llava_doctor.artifacts.training_log import parse_training_log

        return parse_training_log("\n".join(lines) + "\n", name="train.log")

    return build


def _unreadable_record():
    from llava_doctor.templates.examples import dataset

    return dataset([{"id": "nope", "image": "x.jpg"}], "v1")


class TokenizationMismatch(Check):
    code = "LD101"
    title = "tokenization mismatch: the training code will drop (or fail on) the sample"
    artifact = ("Dataset", "TrainingLog")
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
    None pad token, roles that do not alternate, missing fields) are reported here too. In a text
    log of a run (`llava-doctor logs train.log`) the same failure is counted from LLaVA's own prints
    (`WARNING: tokenization mismatch: X vs. Y. (ignored)`, LLaVA-NeXT's `(#turns=N ignored)`,
    FastChat's `#turn = N.`): one print per sample load whose labels were all set to -100.
    """
    fix = (
        "Use the template that matches the LLM (`llava-doctor data --suggest` lists the ones that drop nothing), "
        "keep pad_token distinct from eos, or fix the sample's text."
    )
    valid = (
        Example("v1 with a SentencePiece-like tokenizer", _clean),
        Example("training log without mismatch prints", _text_log("{'loss': 1.92, 'learning_rate': 2e-05, 'epoch': 0.01}")),
    )
    invalid = (
        Example("pad token equal to eos", _pad_is_eos, count=2, contains=("vs.", "pad equal to eos")),
        Example("separator inside a message", _separator_in_message, count=1,
                contains=("sample s1", "separator text '</s>' inside a message")),
        Example("roles out of order", _roles_out_of_order, count=1, contains=("AssertionError",)),
        Example("record without conversations", _unreadable_record, count=1, contains=("'conversations' is missing",)),
        Example("LLaVA's prints in a training log", _text_log(
            "WARNING: tokenization mismatch: 102 vs. 104. (ignored)", "{'loss': 1.92, 'epoch': 0.01}",
            "WARNING: tokenization mismatch: 87 vs. 89. (ignored)"), count=1,
            contains=("2 samples dropped", "lines 1..3", "102 vs. 104")),
    )

    def run_training_log(self, artifact, context: Context) -> Iterable[Finding]:
        seen = artifact.tokenization_mismatches
        if seen is not None:
            examples = ", ".join(f"{x} vs. {y}" for x, y, _, _ in seen.examples)
            yield self.finding(
                f"{seen.count} sample{'s' if seen.count != 1 else ''} dropped: LLaVA printed `WARNING: tokenization "
                f"mismatch` {seen.count} time{'s' if seen.count != 1 else ''} (lines {seen.first_line}..{seen.last_line}, "
                f"e.g. {examples}) and set every label of each such sample to -100; expected no mismatch",
                artifact=artifact.name, location=f"line {seen.first_line}", observed=seen.count, expected=0,
                line=seen.first_line, samples_dropped=seen.count)

    def run_dataset(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.templates.grouping import numbers_out

        for problem in artifact.problems:
            if problem.kind == "too large":
                yield self.finding(
                    f"sample {problem.sample}: not audited: {problem.message}", artifact=artifact.name,
                    location=f"sample {problem.sample}", severity=problem.severity, sample=problem.sample,
                    index=problem.index, group=f"not audited: {numbers_out(problem.message)}")
                continue
            yield self.finding(
                f"sample {problem.sample}: unreadable record: {problem.message} (LLaVA's dataset raises KeyError/TypeError)",
                artifact=artifact.name, location=f"sample {problem.sample}", sample=problem.sample,
                index=problem.index, group=f"unreadable record: {numbers_out(problem.message)}",
            )
        for a in artifact.analyses():
            r, sid = a.result, a.sample.id
            where = f"sample {sid}"
            if r.crash:
                why = f" ({a.cause})" if a.cause.startswith("data problem") else ""
                yield self.finding(
                    f"sample {sid}: the training code ({artifact.recipe} {r.function or 'preprocess'}, template "
                    f"{r.template}) raises instead of training: {r.crash}{why}",
                    artifact=artifact.name, location=where, sample=sid, index=a.sample.index, crash=r.crash,
                    cause=a.cause, group=f"the training code ({artifact.recipe} {r.function or 'preprocess'}) raises "
                    f"{numbers_out(r.crash)}{why}",
                )
                continue
            if r.mismatch is None:
                continue
            cur, total = r.mismatch
            round_txt = f"round {a.drift_round}" if a.drift_round else "the sample"
            yield self.finding(
                f"sample {sid}: LLaVA will print `{r.warning}` and mask all labels ({round_txt}; cause: {a.cause or 'unclassified'})",
                artifact=artifact.name, location=where, observed=cur, expected=total, sample=sid, index=a.sample.index,
                cur_len=cur, total_len=total, round=a.drift_round, cause=a.cause, template=r.template,
                recipe=artifact.recipe, signature=a.signature,
                group=f"dropped: the training code prints `WARNING: tokenization mismatch` and masks every label; "
                      f"cause: {a.cause or 'unclassified'}",
            )
