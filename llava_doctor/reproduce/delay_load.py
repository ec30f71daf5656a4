"""delay-load: a projector-only checkpoint whose config makes LLaVA-NeXT's builder load the tower eagerly; a random tower."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import Scenario
from ._common import quiet
from ._trained import held_out_sample, trained_model

HELD_OUT = 6
MAX_NEW_TOKENS = 12
CHECKPOINT, BASE, IMAGE = "checkpoint", "base", "image.png"


def write_base_llm(model, tokenizer, out: Path) -> Path:
    """The language model alone, as a plain Llama folder (what `--model-base` names): config, weights, tokenizer."""
    from transformers import LlamaConfig

    from ..core import savers

    allowed = set(LlamaConfig().to_dict())
    fields = {k: v for k, v in model.config.to_dict().items() if k in allowed and k not in ("architectures", "model_type")}
    config = LlamaConfig(**fields).to_dict()
    config.update(architectures=["LlamaForCausalLM"], model_type="llama")
    out.mkdir(parents=True, exist_ok=True)
    savers.write_json(out / "config.json", savers.legacy_config(config))
    llm = {k: v for k, v in model.state_dict().items()
           if not k.startswith((savers.CORE_TOWER, savers.CORE_PROJECTOR, savers.CORE_NEWLINE))}
    savers.write_tensors(llm, out / "model.safetensors", safe=True)
    tokenizer.save_pretrained(str(out))
    return out


def write_projector_checkpoint(model, out: Path, *, fixed: bool) -> dict[str, Any]:
    """LLaVA-NeXT's pretrain-stage output (`--tune_mm_mlp_adapter --mm_tunable_parts mm_mlp_adapter`):
    config.json + mm_projector.bin. Its train.py writes mm_tunable_parts and no delay_load, so the builder
    builds the tower eagerly; the fix adds "delay_load": true."""
    from ..core import savers

    savers.save_llava_original(model, out, stage="pretrain")
    config = json.loads((out / "config.json").read_text())
    config.pop("delay_load", None)
    config.update(tune_mm_mlp_adapter=True, mm_tunable_parts="mm_mlp_adapter")
    if fixed:
        config["delay_load"] = True
    savers.write_json(out / "config.json", config)
    return config


def _truth_sentence(sample) -> str:
    """The embedded dataset's own answer to the describe prompt."""
    from ..core.data import QUESTIONS

    return QUESTIONS["describe"][1].format(shape=sample.shape, color=sample.color, position=sample.position)


def make(out: Path, fixed: bool) -> dict[str, Any]:
    import torch
    from PIL import Image

    from ..artifacts.generation import run_generation
    from ..core.builder import load_pretrained_model
    from ..core.data import DESCRIBE_PROMPT
    from ..core.vision import read_tower_weights

    with quiet():
        healthy, tok = trained_model(out)
        base = write_base_llm(healthy, tok, out / BASE)
        config = write_projector_checkpoint(healthy, out / CHECKPOINT, fixed=fixed)
        # LLaVA-NeXT's load_pretrained_model(checkpoint, model_base=base): from_pretrained(base, config=the
        # checkpoint's), mm_projector.bin applied, then load_model() only if the tower says it is not loaded
        loaded = load_pretrained_model(out / CHECKPOINT, model_base=base)
        tower = loaded.model.get_vision_tower()
        current = tower.vision_tower.state_dict()
        # keyed as this transformers' tower names them (the cached tower may come from another major version)
        reference = read_tower_weights(config["mm_vision_tower"], list(current))
        tower_is_base = bool(reference) and reference.keys() == current.keys() and \
            all(torch.equal(current[k], v) for k, v in reference.items())
        samples = [held_out_sample(i) for i in range(HELD_OUT)]
        Image.fromarray(samples[0].image).save(out / IMAGE)
        pictures = [(f"held-out {i}", Image.fromarray(s.image)) for i, s in enumerate(samples)]
        answers = run_generation(loaded.model, loaded.tokenizer, loaded.inputs_builder(), images=pictures,
                                 prompts=[DESCRIBE_PROMPT], max_new_tokens=MAX_NEW_TOKENS, neutral=False).samples
        healthy_answers = run_generation(healthy, tok, loaded.inputs_builder(), images=pictures, prompts=[DESCRIBE_PROMPT],
                                         max_new_tokens=MAX_NEW_TOKENS, neutral=False).samples
    report = loaded.load_report
    truths = [_truth_sentence(s) for s in samples]
    return {
        "checkpoint": CHECKPOINT,
        "model_base": BASE,
        "image": IMAGE,
        "files_in_checkpoint": sorted(p.name for p in (out / CHECKPOINT).iterdir()),
        "delay_load": config.get("delay_load"),
        "mm_tunable_parts": config["mm_tunable_parts"],
        "tower_keys_newly_initialized": sum("vision_tower" in k for k in report["missing_keys"]),
        "tower_loaded_by_from_pretrained": report["tower_loaded_by_from_pretrained"],
        "tower_equals_base": tower_is_base,
        "load_notes": report["notes"],
        "prompt": DESCRIBE_PROMPT,
        "answers": [a.text for a in answers],
        "answer_ids": [list(a.token_ids) for a in answers],
        "healthy_answers": [a.text for a in healthy_answers],
        "truths": truths,
        "correct_answers": sum(a.text == t for a, t in zip(answers, truths)),
        "correct_healthy_answers": sum(a.text == t for a, t in zip(healthy_answers, truths)),
        "distinct_answers": len({a.text for a in answers}),
        "distinct_healthy_answers": len({a.text for a in healthy_answers}),
    }


SCENARIO = Scenario(
    name="delay-load",
    title="A projector-only checkpoint loaded with an eager vision tower: the tower is left random (the delay_load trap)",
    broken="""
        A briefly trained bundled tiny LLaVA, split the way the pretrain stage leaves it: checkpoint/ is what
        LLaVA-NeXT's train.py writes with `--tune_mm_mlp_adapter True --mm_tunable_parts mm_mlp_adapter`
        (config.json with mm_vision_tower naming the base tower folder and no delay_load, and
        mm_projector.bin), base/ is the language model (`--model-base`). It is loaded the way LLaVA-NeXT's
        load_pretrained_model does, through llava-doctor's original-LLaVA classes: from_pretrained(base,
        config=checkpoint's config) - delay_load unset means the tower loads itself inside __init__, on the
        meta device, so it loads nothing but says is_loaded; the base LLM has no tower weights, so
        transformers random-initialises them (LOAD REPORT: MISSING); mm_projector.bin is applied; and the
        builder's `if not vision_tower.is_loaded: vision_tower.load_model()` never loads the real tower.""",
    fixed="""
        Same files with "delay_load": true in checkpoint/config.json (LLaVA-VL/LLaVA-NeXT#285's fix, and the
        builder's own workaround "for correctly loading v1.5 models", commit a94952b): from_pretrained builds
        no tower, load_model() loads the base tower from mm_vision_tower, and the model answers about the
        picture.""",
    seen="""
        No error. With transformers 5 a LOAD REPORT lists model.vision_tower.vision_tower.* as MISSING
        ("those params were newly initialized"); under LLaVA's transformers 4.37 the same path left
        uninitialised memory (measured tower mean -inf) and the output was
            '!!!!...'
        (LLaVA-VL/LLaVA-NeXT#285: fixed by "delay_load=True in the llava_arch.py"). Here the answers stop
        following the picture; this run's answers, the healthy model's and the truths are in scenario.json.""",
    mechanism="""
        Recreated on transformers 5.x, where missing tower weights are random-initialised (not left
        uninitialised as under 4.37), so the answers degrade rather than turning into NaN; the
        uninitialised-memory variant is not reproduced because its contents are not deterministic. The
        healthy model's language model and projector were trained together, then saved apart as base/ and
        mm_projector.bin.""",
    codes=("LD304", "LD504", "LD501"),
    command=(f"llava-doctor audit {{out}}/{CHECKPOINT} ; llava-doctor inspect {{out}}/{CHECKPOINT} --model-base {{out}}/{BASE}"
             f" ; llava-doctor generate {{out}}/{CHECKPOINT} --model-base {{out}}/{BASE} --image {{out}}/{IMAGE}"),
    make=make,
)
