"""Models of the bundled core for the live-check tests (the check examples themselves use transformers models only:
checks/ never import the core)."""
from __future__ import annotations

from llava_doctor.checks._live_examples import HIDDEN, quiet_load, scratch_dir


def tower_folder(vision: str = "clip", pretrain_steps: int = 1) -> str:
    """A base tower saved by the core in the cache (briefly trained: its LayerNorms have left their init)."""
    from llava_doctor.core.configs import prepare_vision_tower

    return str(prepare_vision_tower(None, vision, pretrain_steps=pretrain_steps))


def core_llava(*, delay_load: bool = False, load: bool = True, vision: str = "clip", **config):
    """The bundled original-LLaVA model (model.vision_tower wrapper, model.mm_projector) on a local base tower."""
    from llava_doctor.core.configs import tiny_config
    from llava_doctor.core.model import build_model

    cfg = tiny_config(vision_tower=tower_folder(vision), delay_load=delay_load, hidden_size=HIDDEN, **config)
    model = build_model(cfg)
    if load and not model.get_vision_tower().is_loaded:
        model.get_vision_tower().load_model()
    return model


def eager_tower_reload():
    """The delay_load trap: a checkpoint saved without its tower, config delay_load false, loaded by from_pretrained
    (the tower's own load is a no-op on the meta device; transformers initialises the missing keys)."""
    import json
    from pathlib import Path

    from llava_doctor.core import savers
    from llava_doctor.core.model import model_class_for

    model = core_llava()
    folder = Path(scratch_dir("eager-tower"))
    savers.save_llava_original(model, folder, include_vision_tower=False)
    config = json.loads((folder / "config.json").read_text())
    config["delay_load"] = False
    savers.write_json(folder / "config.json", config)
    return quiet_load(lambda: model_class_for(model.config).from_pretrained(str(folder)))
