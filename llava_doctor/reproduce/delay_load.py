"""delay-load: an eagerly built vision tower, a checkpoint without tower weights, and a random tower after loading."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import Scenario
from ._common import quiet
from ._trained import held_out_sample, trained_model

HELD_OUT = 6
MAX_NEW_TOKENS = 12


def longest_run(ids: list[int]) -> int:
    best = run = 0
    for index, token in enumerate(ids):
        run = run + 1 if index and token == ids[index - 1] else 1
        best = max(best, run)
    return best


def make(out: Path, fixed: bool) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from ..core import savers
    from ..core.data import DESCRIBE_PROMPT
    from ..core.images import write_png
    from ..core.model import generate_greedy, model_class_for

    with quiet():
        healthy, tok = trained_model(out)
        checkpoint = out / "checkpoint"
        savers.save_llava_original(healthy, checkpoint, include_vision_tower=False)
        config_path = checkpoint / "config.json"
        config = json.loads(config_path.read_text())
        # LLaVA-NeXT builds the tower eagerly unless config.delay_load (its builder sets it only for "v1.5" names)
        config["delay_load"] = bool(fixed)
        savers.write_json(config_path, config)

        # the builder's sequence (load_pretrained_model): from_pretrained, then load the tower only if not loaded
        model, info = model_class_for(healthy.config).from_pretrained(str(checkpoint), output_loading_info=True)
        tower = model.get_vision_tower()
        loaded_by_from_pretrained = tower.is_loaded
        if not tower.is_loaded:
            tower.load_model()
        model.eval()
        base = load_file(str(Path(config["mm_vision_tower"]) / "model.safetensors"))
        current = tower.vision_tower.state_dict()
        tower_is_base = all(torch.equal(current[k], v) for k, v in base.items())
        savers.save_llava_original(model, out / "loaded")

        samples = [held_out_sample(i) for i in range(HELD_OUT)]
        answers = [generate_greedy(model, tok, s.image, DESCRIBE_PROMPT, max_new_tokens=MAX_NEW_TOKENS) for s in samples]
        healthy_answers = [generate_greedy(healthy, tok, s.image, DESCRIBE_PROMPT, max_new_tokens=MAX_NEW_TOKENS).text
                           for s in samples]
        write_png(out / "image.png", samples[0].image)
    generation = {
        "prompt": DESCRIBE_PROMPT,
        "image": "image.png",
        "prompt_ids": answers[0].prompt_ids,
        "generated_ids": answers[0].token_ids,
        "generated_text": answers[0].text,
    }
    savers.write_json(out / "generation.json", generation)
    tower_missing = [k for k in info["missing_keys"] if "vision_tower" in k]
    return {
        **generation,
        "checkpoint": "checkpoint",
        "loaded": "loaded",
        "delay_load": bool(fixed),
        "tower_keys_in_checkpoint": 0,
        "tower_keys_newly_initialized": len(tower_missing),
        "tower_loaded_by_from_pretrained": loaded_by_from_pretrained,
        "tower_equals_base": tower_is_base,
        "answers": [a.text for a in answers],
        "answer_ids": [a.token_ids for a in answers],
        "longest_token_run": max(longest_run(a.token_ids) for a in answers),
        "correct_answers": sum(a.text == _truth_sentence(s) for a, s in zip(answers, samples)),
        "correct_healthy_answers": sum(text == _truth_sentence(s) for text, s in zip(healthy_answers, samples)),
        "distinct_answers": len({a.text for a in answers}),
        "distinct_healthy_answers": len(set(healthy_answers)),
        "healthy_answers": healthy_answers,
        "truths": [f"{s.color} {s.shape} at the {s.position}" for s in samples],
    }


def _truth_sentence(sample) -> str:
    """The embedded dataset's own answer to the describe prompt."""
    from ..core.data import QUESTIONS

    return QUESTIONS["describe"][1].format(shape=sample.shape, color=sample.color, position=sample.position)


SCENARIO = Scenario(
    name="delay-load",
    title="Vision tower built eagerly, then left random by from_pretrained (the delay_load trap)",
    broken="""
        A briefly trained bundled tiny LLaVA was saved without its frozen vision tower (checkpoint/: LLM +
        projector, mm_vision_tower naming the base tower folder, as exports that rebuild the tower from
        mm_vision_tower write it) and config "delay_load": false - LLaVA-NeXT's default, which builds and
        loads the tower inside the model's __init__. It was then loaded the way LLaVA's builder does:
        from_pretrained(checkpoint), and vision_tower.load_model() only `if not vision_tower.is_loaded`.
        Inside from_pretrained the model is built on the meta device, so the tower's own load is a no-op;
        the checkpoint has no tower keys, so transformers random-initialises them (LOAD REPORT: MISSING);
        and since the tower already says is_loaded, the builder never loads the real weights. loaded/ is
        the model as it ended up (its tower is random); generation.json holds a greedy answer about
        image.png.""",
    fixed="""
        Same checkpoint with "delay_load": true (LLaVA-NeXT's builder workaround "for correctly loading
        v1.5 models", commit a94952b): from_pretrained builds no tower, the builder's load_model() loads the
        base tower from mm_vision_tower, and the model answers about the picture.""",
    seen="""
        No error. With transformers 5 a LOAD REPORT lists model.vision_tower.vision_tower.* as MISSING
        ("those params were newly initialized"); under LLaVA's transformers 4.37 the same path left
        uninitialised memory (measured tower mean -inf) and the output was
            '!!!!...'
        (LLaVA-VL/LLaVA-NeXT#285: fixed by "delay_load=True in the llava_arch.py"). Here the answers stop
        following the picture (wrong shapes, colours and positions, fewer distinct answers); this run's
        answers, the healthy model's and the truths are in scenario.json.""",
    mechanism="""
        Recreated on transformers 5.x, where missing tower weights are random-initialised (not left
        uninitialised as under 4.37), so the answers degrade rather than turning into NaN; the
        uninitialised-memory variant is not reproduced because its contents are not deterministic.""",
    codes=("LD304", "LD504"),
    command="llava-doctor audit --deep {out}/loaded",
    make=make,
)
