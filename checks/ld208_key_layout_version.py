"""LD208: key layouts that another transformers major version reads as random components."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.layout import LORA_PATTERN, canonical_key, vision_tower_unfrozen
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint, clip_tower, hf_llava, hf_llava_config, original_llava, xtuner_pth

TOWER_PREFIXES = {
    "hf-llava": "vision_tower.",
    "hf-llava-4x": "vision_tower.",
    "hf-llava-memory": "model.vision_tower.",
    "llava-original": "model.vision_tower.vision_tower.",
    "xtuner": "visual_encoder.",
}
CONSUMERS = {  # who still reads the 4.x names
    "hf-llava": "transformers < 5 (e.g. LLaVA's pin 4.37.2)",
    "hf-llava-4x": "transformers < 5 (e.g. LLaVA's pin 4.37.2)",
    "hf-llava-memory": "transformers < 5",
    "llava-original": "original LLaVA / LLaVA-NeXT (transformers 4.37.2 CLIPVisionModel)",
    "xtuner": "XTuner (transformers 4.x CLIPVisionModel)",
}


def _hf(vision_model: bool, version: str = "5.23.0"):
    return lambda: checkpoint(hf_llava(vision_model=vision_model), config=hf_llava_config(transformers_version=version))


def _mixed():
    """4.x encoder keys, but embeddings and layer norms renamed to the 5.x style (a half-converted tower)."""
    keys = {}
    for key, shape in hf_llava(vision_model=True).items():
        if key.startswith("vision_tower.vision_model.") and ".encoder." not in key:
            key = key.replace("vision_tower.vision_model.", "vision_tower.", 1)
        keys[key] = shape
    return checkpoint(keys, config=hf_llava_config())


# Where transformers 4.x LlavaForConditionalGeneration (and Next/OneVision) keeps each component on disk.
ROOTS_4X = {
    "vision_tower": "vision_tower.vision_model.",
    "projector": "multi_modal_projector.",
    "language_model": "language_model.model.",
    "lm_head": "language_model.lm_head.",
    "image_newline": "image_newline",
}
HF_LAYOUTS = ("hf-llava", "hf-llava-4x", "hf-llava-memory")


def keys_4x_rejects(keys, layout: str) -> dict[str, list[tuple[str, str]]]:
    """Component -> [(key, the key 4.x expects)] for keys transformers 4.x loads as missing + unexpected.

    4.x matches keys by name, with one rewrite: when any checkpoint key starts with its base model
    prefix `model.`, it prefixes every key it expects with `model.` (so `model.multi_modal_projector.*`
    loads, and `lm_head.weight` does not). Measured with 4.37.2 in tests/test_trainer_artifacts.py.
    """
    keys = [k for k in keys if not LORA_PATTERN.search(k)]
    prefixed = any(k.startswith("model.") for k in keys)
    rejected: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(keys):
        canonical = canonical_key(key, layout)
        if canonical is None:
            continue
        component, rest = canonical.split(":", 1)
        root = ROOTS_4X.get(component)
        if root is None:
            continue
        expected = root + rest if component != "image_newline" else root
        seen = (key[len("model."):] if key.startswith("model.") else None) if prefixed else key
        if seen != expected:
            rejected.setdefault(component, []).append((key, ("model." if prefixed else "") + expected))
    return rejected


def _zero3_trainer_save():
    """transformers 5 under ZeRO-3 (a model from from_pretrained, saved by the Trainer): `language_model.model.model.*`."""
    keys = {k.replace("language_model.model.", "language_model.model.model.", 1): v for k, v in hf_llava(vision_model=True).items()}
    return checkpoint(keys, config=hf_llava_config(transformers_version="5.24.0"))


def _memory_state_dict():
    """save_file(model.state_dict()) of a transformers 5 Llava: in-memory names."""
    keys = {}
    for key, shape in hf_llava().items():
        if key.startswith("language_model.lm_head."):
            key = "lm_head." + key[len("language_model.lm_head."):]
        elif key.startswith("language_model.model."):
            key = "model.language_model." + key[len("language_model.model."):]
        else:
            key = "model." + key
        keys[key] = shape
    return checkpoint(keys, config=hf_llava_config())


def _original_5x():
    keys = original_llava()
    keys.update(clip_tower("model.vision_tower.vision_tower."))
    return checkpoint(keys, config={"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 96,
                                     "transformers_version": "5.23.0", "unfreeze_mm_vision_tower": True})


class KeyLayoutVersion(Check):
    code = "LD208"
    title = "vision-tower key layout read as a random tower by another transformers version"
    artifact = "Checkpoint"
    severity = Severity.WARNING
    rationale = """
    transformers 5 removed the `vision_model.` level from CLIPVisionModel and SiglipVisionModel,
    so checkpoints it writes name the tower `vision_tower.embeddings.*`, where every 4.x release
    wrote `vision_tower.vision_model.embeddings.*`. transformers 5 converts both on load, but
    transformers 4.x (LLaVA pins 4.37.2; XTuner and most serving stacks of that era too) does not:
    loading a 5.x-saved Llava in 4.37 reports all 39 tower keys of a tiny model as missing and
    unexpected (`Some weights of the model checkpoint ... were not used when initializing` /
    `newly initialized`), prints only a warning, and runs with a randomly initialised vision
    tower. A tower whose keys mix both styles (a half-done conversion) is partly re-initialised by
    4.x. The other components have the same trap: transformers 5 under ZeRO-3 (a model loaded with
    `from_pretrained`, saved by the Trainer) writes `language_model.model.model.*` where a plain save
    writes `language_model.model.*`; 5.x reads both, 4.37 loads it with all 20 LLM keys of a tiny
    model missing and unexpected, i.e. a randomly initialised language model; a raw in-memory state
    dict (`model.language_model.*`, `lm_head.weight`) loses the LLM, the head and the tower in 4.x. A uniform 5.x tower in a transformers-native checkpoint is reported as info (it is right
    for transformers >= 5); in original-LLaVA and XTuner layouts, whose code pins 4.x, and for mixed
    towers it is a warning.
    """
    fix = """
    Load the checkpoint with transformers >= 5, or re-save it for 4.x consumers with the tower keys
    renamed to the 4.x form (insert `vision_model.` after the tower prefix, e.g.
    `vision_tower.embeddings.patch_embedding.weight` -> `vision_tower.vision_model.embeddings.patch_embedding.weight`);
    for a mixed tower, rename the keys that lack `vision_model.` so the tower is uniform.
    """
    valid = (
        Example("4.x keys written by 4.x", _hf(True, "4.45.2")),
        Example("checkpoint without a tower", lambda: checkpoint(hf_llava(tower=False), config=hf_llava_config())),
        Example("XTuner 4.x keys", lambda: checkpoint(xtuner_pth(visual_encoder=True), file="iter_1.pth")),
        Example("original LLaVA, frozen tower saved by transformers 5 (delay_load ignores it)", lambda: checkpoint(
            {**original_llava(), **clip_tower("model.vision_tower.vision_tower.")},
            config={"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 96})),
    )
    invalid = (
        Example("transformers 5 under ZeRO-3: language_model.model.model.*", _zero3_trainer_save, count=1,
                contains=("language_model: 20 of 20 keys", "language_model.model.model.embed_tokens.weight",
                          "expects language_model.model.embed_tokens.weight", "randomly initialised language model")),
        Example("a raw 5.x state dict (model.language_model.*, lm_head.weight)", _memory_state_dict, count=3,
                contains=("39 vision-tower keys", "language_model: 20 of 20 keys", "lm_head: 1 of 1 keys",
                          "expects model.language_model.lm_head.weight")),
        Example("5.x keys", _hf(False), count=1,
                contains=("39 vision-tower keys", "vision_tower.embeddings.class_embedding", "transformers 5.23.0",
                          "4.37.2")),
        Example("mixed styles", _mixed, count=1, contains=("mixes", "7 of 39", "vision_tower.embeddings.class_embedding")),
        Example("original LLaVA saved by transformers 5", _original_5x, count=1,
                contains=("model.vision_tower.vision_tower.embeddings", "original LLaVA")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        if artifact.deepspeed is not None and not artifact.deepspeed.consolidated:
            return  # DeepSpeed's own module state: zero_to_fp32 rebuilds weights from it, from_pretrained never reads it
        yield from self._tower(artifact)
        if artifact.layout in HF_LAYOUTS:
            rejected = keys_4x_rejects(artifact.tensors, artifact.layout)
            totals = {c: len(v) for c, v in artifact.by_component().items()}
            for component in ("projector", "language_model", "lm_head", "image_newline"):
                if rejected.get(component):
                    yield self._component(artifact, component, rejected[component], totals.get(component, 0))

    def _component(self, artifact, component: str, rejected: list, total: int) -> Finding:
        key, expected = rejected[0]
        writer = (artifact.config or {}).get("transformers_version")
        written = f" (config says transformers {writer})" if writer else ""
        root = ("model." if expected.startswith("model.") else "") + ROOTS_4X[component]
        what = {"language_model": "language model", "lm_head": "output head"}.get(component, component)
        return self.finding(
            f"{component}: {len(rejected)} of {total} keys use a layout transformers 4.x does not read (e.g. {key}, where "
            f"4.x expects {expected}){written}; transformers < 5 (e.g. LLaVA's pin 4.37.2) reports them missing and "
            f"unexpected and runs with a randomly initialised {what}; expected {root}* for 4.x consumers",
            artifact=artifact.name, location=f"{artifact.tensors[key].file}:{key}", severity=Severity.WARNING,
            observed=key, expected=expected, component=component, keys=len(rejected),
        )

    def _tower(self, artifact) -> Iterable[Finding]:
        prefix = TOWER_PREFIXES.get(artifact.layout)
        if prefix is None:
            return
        tower = sorted(k for k in artifact.tensors if k.startswith(prefix) and not LORA_PATTERN.search(k)
                       and ".base_model." not in k and not k[len(prefix):].startswith("base_model."))
        if not tower:
            return
        without = [k for k in tower if not k[len(prefix):].startswith("vision_model.")]
        if not without:
            return
        config = artifact.config or {}
        if artifact.layout == "llava-original" and artifact.config and not vision_tower_unfrozen(config):
            # delay_load discards a frozen tower's keys whatever their style and loads mm_vision_tower
            return
        writer = config.get("transformers_version")
        written = f" (config says transformers {writer})" if writer else ""
        consumers = CONSUMERS[artifact.layout]
        if len(without) < len(tower):
            message = (f"vision tower mixes key styles: {len(without)} of {len(tower)} keys lack `vision_model.` "
                       f"(e.g. {without[0]}){written}; {consumers} re-initialises those keys at random; "
                       "expected one style")
        else:
            message = (f"{len(tower)} vision-tower keys use the transformers 5 style without `vision_model.` "
                       f"(e.g. {without[0]}){written}; {consumers} silently re-initialises the whole tower at random; "
                       f"expected {prefix}vision_model.* for 4.x consumers")
        # A uniform 5.x tower in a transformers-native checkpoint is right for transformers >= 5 (the
        # writer); only a 4.x consumer is at risk, so it is a note. The original-LLaVA and XTuner code
        # bases pin 4.x, and a mixed tower is wrong for everyone on 4.x: those stay warnings.
        native_and_uniform = artifact.layout.startswith("hf-llava") and len(without) == len(tower)
        yield self.finding(
            message,
            severity=Severity.INFO if native_and_uniform else Severity.WARNING,
            artifact=artifact.name,
            location=artifact.tensors[without[0]].file + ":" + without[0],
            observed="5.x" if len(without) == len(tower) else "mixed",
            expected="4.x" if len(without) == len(tower) else "uniform",
            keys=len(without),
        )
