"""LD103: the template does not fit the tokenizer (per dataset), with the templates that do."""
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


class TemplateFit(Check):
    code = "LD103"
    title = "template does not fit the tokenizer"
    artifact = "Dataset"
    rationale = """
    Most reports of `WARNING: tokenization mismatch` and of a loss stuck at 0 come from a template
    written for another LLM: `--version v1` with Yi-34B (`102 vs. 104`, haotian-liu/LLaVA#1166),
    Qwen (PKU-YuanGroup/MoE-LLaVA#42), Llama-3 (BAAI-DCAI/Bunny#75). Maintainers answer "use the
    right version" again and again. When at least half of the samples are dropped, crash or drift
    under the chosen template, this check says so once for the dataset and lists the templates
    under which the same samples (the first 64) are neither dropped nor drifted with this tokenizer
    and this training code.
    """
    fix = "Train with one of the listed templates (`--version NAME`), or one written for this LLM."
    valid = (Example("v1 on a Llama-like tokenizer", _fits),)
    invalid = (Example("chatml_direct on a Llama-like tokenizer", _chatml_on_llama_like, count=1,
                       contains=("template chatml_direct", "templates that fit", "v1")),)

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.templates.suggest import fit_message, fitting_templates, summarize

        analyses = artifact.analyses()
        fit = summarize(artifact.template, analyses)
        bad = sum(1 for a in analyses if a.result.mismatch is not None or a.result.crash or a.drifts)
        threshold = float(context.option("template_fit_threshold", 0.5))
        if not analyses or bad < threshold * len(analyses):
            return
        tokenizer = artifact.base_tokenizer if artifact.base_tokenizer is not None else artifact.tokenizer
        fits = fitting_templates(artifact.samples, tokenizer, artifact.recipe, pad_token=artifact.pad_token,
                                 max_length=artifact.max_length)
        good = [f.template for f in fits if f.clean and f.template != artifact.template]
        yield self.finding(
            fit_message(artifact.template, artifact.recipe, bad, fit, good),
            artifact=artifact.name, location=f"template {artifact.template}", observed=bad, expected=0,
            template=artifact.template, recipe=artifact.recipe, suggestions=good, dropped=fit.dropped,
            crashed=fit.crashed, drifted=fit.drifted, samples=len(analyses),
        )
