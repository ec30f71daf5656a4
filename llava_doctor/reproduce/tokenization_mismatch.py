"""tokenization-mismatch: a ChatML-style tokenizer with no BOS, trained with LLaVA's `--version v1` preprocessing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import Scenario
from ._common import quiet

RECIPE = "llava-1.5"  # haotian-liu/LLaVA at the v1.5 release (llava_doctor.templates.recipes)
BROKEN_TEMPLATE, FIXED_TEMPLATE = "v1", "chatml_direct"
SAMPLES = 32
VOCAB_SIZE = 640
SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>")


def write_chatml_tokenizer(out_dir: Path) -> Path:
    """A Qwen-style tokenizer: byte-level BPE on the embedded dataset's text, ChatML specials and no BOS added,
    as Qwen/Yi-family tokenizers do. Byte-level, like Qwen's, so that it tokenizes the same under every
    `tokenizers` release (a Metaspace one prepends `▁` after special tokens under tokenizers 0.15, LLaVA's pin,
    and the ChatML fix would then drop samples too). The templates' system prompts are in the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ..core.tokenizer import portable_tokenizer_json, tokenizer_corpus
    from ..templates.conversation import get_template

    lines = tokenizer_corpus()
    for name in (BROKEN_TEMPLATE, FIXED_TEMPLATE):
        template = get_template(name)
        lines.append(" ".join([template.system, *template.roles, template.sep or "", template.sep2 or ""]))
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(lines, trainer=trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIALS), show_progress=False, min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out_dir.mkdir(parents=True, exist_ok=True)
    portable = portable_tokenizer_json(json.loads(tokenizer.to_str()))  # readable by tokenizers 0.15 too
    (out_dir / "tokenizer.json").write_text(json.dumps(portable, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "additional_special_tokens": ["<image>", "<|im_start|>", "<|im_end|>"]}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "add_bos_token": False, "add_eos_token": False,
              "model_max_length": 2048, "padding_side": "right", "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n")
    return out_dir


def make(out: Path, fixed: bool) -> dict[str, Any]:
    from ..core.data import build_samples, write_dataset
    from ..core.tokenizer import load_tokenizer
    from ..templates.analysis import SampleInput, analyze
    from ..templates.recipes import setup_tokenizer

    template = FIXED_TEMPLATE if fixed else BROKEN_TEMPLATE
    with quiet():
        samples = build_samples(SAMPLES)
        data = write_dataset(samples, out)
        tokenizer = load_tokenizer(write_chatml_tokenizer(out / "tokenizer"))
        run = {"codebase": "haotian-liu/LLaVA v1.5 (before commit 879ef31)", "recipe": RECIPE, "version": template,
               "data_path": data.name, "image_folder": "images", "tokenizer": "tokenizer", "model_max_length": 2048}
        (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        configured = setup_tokenizer(tokenizer, RECIPE, template)
        records = json.loads(data.read_text())
        analyses = analyze([SampleInput(r["id"], r["conversations"], 1) for r in records], configured, template, RECIPE)
    dropped = [a for a in analyses if a.dropped]
    return {
        "recipe": RECIPE,
        "template": template,
        "data": data.name,
        "tokenizer": "tokenizer",
        "tokenizer_adds_bos": tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id,
        "samples": len(analyses),
        "dropped_samples": len(dropped),
        "dropped_ids": [a.sample.id for a in dropped],
        "multi_round_samples": sum(1 for r in records if len(r["conversations"]) > 2),
        "warnings": [a.result.warning for a in dropped[:5]],
        "cause": dropped[0].cause if dropped else None,
        "supervised_tokens": sum(a.result.supervised for a in analyses),
        "answer_tokens": sum(a.oracle.supervised for a in analyses if a.oracle is not None),
    }


SCENARIO = Scenario(
    name="tokenization-mismatch",
    title="Template does not fit the tokenizer: LLaVA masks whole samples (tokenization mismatch)",
    broken=f"""
        {SAMPLES} conversations of the embedded dataset (data.json, images/) and a Yi-style tokenizer built
        by the bundled core's recipe (tokenizer/: ChatML specials, no BOS added) were put through
        haotian-liu/LLaVA's v1.5 preprocessing (`{RECIPE}` in llava_doctor.templates) with
        `--version {BROKEN_TEMPLATE}` (run.json). preprocess_v1 splits the conversation at the '</s>'
        separator, tokenizes every round on its own and sums the lengths. With this tokenizer the text after
        '</s>' tokenizes differently in the full conversation than at the start of a round (the non-legacy
        behaviour of tokenizers >= 0.14), so from the second round on the sum falls short of the full
        tokenization (scenario.json: "cause"); LLaVA prints a warning and sets every label of the sample to
        -100. Every multi-round conversation is dropped; single-round ones survive. The dropped-sample
        facts come from
        llava_doctor.templates (the training code's arithmetic), not from running LLaVA.""",
    fixed=f"""
        Same data and tokenizer with the template that fits it, `--version {FIXED_TEMPLATE}` (ChatML,
        LLaVA's template for Yi-34B, via preprocess_mpt): no sample is dropped and the supervised tokens
        are exactly the answers.""",
    seen="""
        One line per dropped sample, printed (not logged) during data loading:
            WARNING: tokenization mismatch: 102 vs. 104. (ignored)
        and then a training loss of 0.0 once every sample of a batch is dropped (haotian-liu/LLaVA#1166:
        llava-v1.6-34b with --version v1, "102 vs. 104", loss 0.0; the maintainer's answer in #375: "most
        issues of loss=0 is related to the tokenizer version mismatch"). This run's warnings are in
        scenario.json ("warnings").""",
    codes=("LD101", "LD103"),
    command=f"llava-doctor data {{out}}/data.json --tokenizer {{out}}/tokenizer --template {BROKEN_TEMPLATE} --recipe {RECIPE}",
    fixed_command=f"llava-doctor data {{out}}/data.json --tokenizer {{out}}/tokenizer --template {FIXED_TEMPLATE} --recipe {RECIPE}",
    make=make,
)

