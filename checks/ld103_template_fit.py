"""LD103: the template does not fit the tokenizer or the codebase (per dataset), with the set-ups that do."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding
from llava_doctor.registry import Check, Context, Example


def _fits():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat .", "black and white ."), record("s2", "yes .")], "v1")


def _chatml_on_llama_like():
    from llava_doctor.templates.examples import dataset, record

    return dataset([record("s1", "a cat .", "black and white ."), record("s2", "yes .", "no .")], "chatml_direct")


def _malformed_data():
    from llava_doctor.templates.examples import dataset, record

    one_sided = record("q", "a cat .")
    one_sided["conversations"] = one_sided["conversations"][:1]
    twice = record("twice", "a cat .")
    twice["conversations"].insert(1, {"from": "human", "value": "tell me ."})
    return dataset([one_sided, twice, record("ok", "yes .")], "v1")


class TemplateFit(Check):
    code = "LD103"
    title = "template does not fit the tokenizer or the codebase"
    artifact = "Dataset"
    rationale = """
    Most reports of `WARNING: tokenization mismatch` and of a loss stuck at 0 come from a template
    written for another LLM: `--version v1` with Yi-34B (`102 vs. 104`, haotian-liu/LLaVA#1166),
    Qwen (PKU-YuanGroup/MoE-LLaVA#42), Llama-3 (BAAI-DCAI/Bunny#75). Maintainers answer "use the
    right version" again and again. When at least half of the well-formed samples are dropped,
    crash or drift under the chosen template, this check says so once for the dataset and lists
    the set-ups (recipe, template, pad token) under which the same samples are neither dropped nor
    drifted with this tokenizer, as command-line options. Malformed conversations (one-sided, out of
    order) are a data problem no template fixes: they are reported per sample by LD101/LD104 and not
    counted here. The audit also says once when the codebase has no template of the name given:
    its train.py then trains with vicuna_v1 without a word, while its inference scripts raise KeyError.
    """
    fix = "Train with one of the listed set-ups (`--version NAME`), or one written for this LLM."
    valid = (Example("v1 on a Llama-like tokenizer", _fits),
             Example("malformed conversations are no template's fault", _malformed_data))
    invalid = (Example("chatml_direct on a Llama-like tokenizer", _chatml_on_llama_like, count=1,
                       contains=("template chatml_direct", "set-ups that fit", "--template v1")),)

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.templates.suggest import fit_message, fitting_setups, ranked_options, summarize

        analyses = artifact.analyses()
        fit = summarize(artifact.template, analyses, recipe=artifact.recipe, pad_token=artifact.pad_token)
        sound = [a for a in analyses if not a.problem]
        bad = sum(1 for a in sound if a.bad)
        threshold = float(context.option("template_fit_threshold", 0.5))
        if not sound or bad < threshold * len(sound):
            return
        tokenizer = artifact.base_tokenizer if artifact.base_tokenizer is not None else artifact.tokenizer
        fits = fitting_setups([a.sample for a in sound], tokenizer, artifact.recipe, pad_token=artifact.pad_token,
                              max_length=artifact.max_length)
        good = ranked_options(fits, artifact.recipe, artifact.pad_token, artifact.template)
        yield self.finding(
            fit_message(artifact.template, artifact.recipe, bad, fit, good),
            artifact=artifact.name, location=f"template {artifact.template}", observed=bad, expected=0,
            template=artifact.template, recipe=artifact.recipe, suggestions=good, dropped=fit.dropped,
            crashed=fit.crashed, drifted=fit.drifted, samples=len(analyses), malformed=fit.malformed,
        )
