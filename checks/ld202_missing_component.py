"""LD202: a whole component's weights (vision tower, projector, LLM, lm_head) are missing."""
from __future__ import annotations

import re
from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import (
    checkpoint, hf_llava, hf_llava_config, llava_lora, original_llava, original_llava_config, xtuner_pth,
)

HF_LAYOUTS = ("hf-llava", "hf-llava-4x", "hf-llava-memory")
HF_PREFIXES = {
    "hf-llava": ("vision_tower.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head."),
    "hf-llava-4x": ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head."),
    "hf-llava-memory": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head."),
}
FINETUNE_STAGES = ("finetune", "full", "sft")


SHARD_NAME = re.compile(r"-\d+-of-\d+\.(safetensors|bin)$")


def _lone_shard(artifact) -> bool:
    weights = {t.file for t in artifact.tensors.values()}
    return len(weights) == 1 and "index" not in artifact.notes and bool(SHARD_NAME.search(next(iter(weights))))


def _ex(keys, config=None, file="model.safetensors", files=None):
    return lambda: checkpoint(keys(), config=config() if callable(config) else config, file=file)


def _stage(stage: str):
    return lambda: Context(stage=stage)


class MissingComponent(Check):
    code = "LD202"
    title = "a component's weights are missing"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    rationale = """
    A checkpoint can be perfectly readable and still lack a whole component; what that means
    depends on the format. transformers 5 never raises for missing keys: a Llava checkpoint
    without `vision_tower.*` loads with a LOAD REPORT line `MISSING: those params were newly
    initialized because missing from the checkpoint` and a randomly initialised tower, and an
    untied model without `lm_head` gets a random head. XTuner's `.pth` leaves out `visual_encoder.*`
    by design when `freeze_visual_encoder=True`; `xtuner convert pth_to_hf --save-format
    huggingface` then fails on its strict load (InternLM/xtuner#827). Original LLaVA checkpoints
    normally omit the frozen CLIP tower: `delay_load` rebuilds it from `mm_vision_tower` at load
    time, which works only if that reference resolves on the loading machine, and silently
    discards a fine-tuned tower (`unfreeze_mm_vision_tower`). A pretrain-stage directory holds only
    `mm_projector.bin` (loading it alone fails with `OSError: Error no file named
    pytorch_model.bin`), and a LoRA run without `non_lora_trainables.bin` has lost its projector:
    LLaVA prints `Some weights of LlavaLlamaForCausalLM were not initialized from the model
    checkpoint ... newly initialized: ['model.mm_projector...']`.
    """
    fix = """
    Export the missing part with the weights, or make it rebuildable: for XTuner force
    `need_visual_encoder=True` in `to_huggingface_llava` (or use the standalone
    `convert_xtuner_weights_to_hf.py --vision_model_id BASE_VIT`); for original LLaVA keep
    `mm_vision_tower` pointing at a tower the loading machine can reach and save the tower when it
    was trained; load pretrain-stage projectors with `--model-base BASE_LLM`; save
    `non_lora_trainables.bin` with LoRA runs; set `tie_word_embeddings` only if the head really is
    the embedding.
    """
    valid = (
        Example("complete HF llava", _ex(hf_llava, hf_llava_config)),
        Example("tied HF llava without lm_head", _ex(lambda: hf_llava(lm_head=False), lambda: hf_llava_config(tie=True))),
        Example("XTuner full fine-tune with trained ViT", _ex(lambda: xtuner_pth(visual_encoder=True), file="iter_100.pth")),
        Example("one shard of a sharded HF llava", _ex(lambda: hf_llava(tower=False), hf_llava_config,
                                                       file="model-00002-of-00003.safetensors")),
        Example("LLaVA LoRA with non_lora_trainables.bin", _ex(lambda: llava_lora(non_lora_trainables=True),
                                                               original_llava_config, file="adapter_model.safetensors")),
    )
    invalid = (
        Example("HF llava without its vision tower", _ex(lambda: hf_llava(tower=False), hf_llava_config), count=1,
                contains=("vision_tower", "random")),
        Example("untied HF llava without lm_head", _ex(lambda: hf_llava(lm_head=False), hf_llava_config), count=1,
                contains=("lm_head", "tie_word_embeddings is false")),
        Example("XTuner .pth with a frozen ViT", _ex(lambda: xtuner_pth(visual_encoder=False), file="iter_100.pth"),
                count=1, contains=("visual_encoder", "--save-format huggingface", "need_visual_encoder")),
        Example("original LLaVA without its tower (rebuilt by delay_load)", _ex(original_llava, original_llava_config),
                count=1, contains=("mm_vision_tower", "openai/clip-vit-large-patch14-336", "not a local directory")),
        Example("original LLaVA whose trained tower was not saved",
                _ex(original_llava, lambda: original_llava_config(unfreeze_mm_vision_tower=True)), count=1,
                contains=("unfreeze_mm_vision_tower",)),
        Example("original LLaVA without projector", _ex(lambda: original_llava(projector=False), original_llava_config),
                count=2, contains=("mm_projector", "newly initialized")),
        Example("LLaVA LoRA without non_lora_trainables.bin", _ex(lambda: llava_lora(non_lora_trainables=False),
                                                                  original_llava_config, file="adapter_model.safetensors"),
                count=1, contains=("non_lora_trainables.bin", "projector")),
        Example("pretrain mm_projector.bin", _ex(lambda: original_llava(llm=False), original_llava_config,
                                                 file="mm_projector.bin"), count=1, contains=("--model-base",)),
        Example("pretrain projector audited as a fine-tune", _ex(lambda: original_llava(llm=False), original_llava_config,
                                                                 file="mm_projector.bin"),
                context=_stage("finetune"), count=1, contains=("stage finetune",)),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        if _lone_shard(artifact):
            return  # one shard of a sharded set holds only some components by construction
        present = artifact.components_present()
        layout = artifact.layout
        if layout in HF_LAYOUTS:
            yield from self._hf(artifact, present)
        elif layout == "llava-original":
            yield from self._original(artifact, present)
        elif layout == "llava-original-pretrain":
            yield self._pretrain(artifact, context)
        elif layout == "peft-adapter" and artifact.config_kind == "llava-original":
            yield self._missing(artifact, "projector",
                                "LoRA adapter of a LLaVA model without non_lora_trainables.bin: the trained projector "
                                "was not saved and LLaVA will newly initialise model.mm_projector; expected non_lora_trainables.bin")
        elif layout == "xtuner":
            yield from self._xtuner(artifact, present, context)

    # --------------------------------------------------------------------- per format

    def _hf(self, artifact, present: set[str]) -> Iterable[Finding]:
        tower, projector, llm, head = HF_PREFIXES[artifact.layout]
        if "vision_tower" not in present:
            yield self._missing(artifact, "vision_tower",
                                f"no {tower}* keys; transformers 5 loads this without error and random-initialises "
                                "the whole vision tower (LOAD REPORT: MISSING); expected the tower's weights")
        if "projector" not in present:
            yield self._missing(artifact, "projector",
                                f"no {projector}* keys; the projector would be random-initialised; expected its weights")
        if "language_model" not in present:
            yield self._missing(artifact, "language_model",
                                f"no {llm}* keys; the language model would be random-initialised; expected its weights")
        elif "lm_head" not in present:
            yield from self._lm_head(artifact, head)
        if artifact.config_kind in ("hf-llava-next", "hf-llava-onevision") and "image_newline" not in present:
            yield self._missing(artifact, "image_newline",
                                "no image_newline; LlavaNext/OneVision would random-initialise it; expected a [hidden] tensor")

    def _lm_head(self, artifact, head: str) -> Iterable[Finding]:
        from llava_doctor.schema import tied_embeddings

        if artifact.config is None or tied_embeddings(artifact.config, artifact.config_kind):
            return
        yield self._missing(artifact, "lm_head",
                            f"no {head}weight while tie_word_embeddings is false; the output head would be "
                            "random-initialised; expected the head's weights (or a tied config)")

    def _original(self, artifact, present: set[str]) -> Iterable[Finding]:
        config = artifact.config or {}
        if "vision_tower" not in present:
            yield self._original_tower(artifact, config)
        if "projector" not in present and config.get("mm_projector_type") != "identity":
            yield self._missing(artifact, "projector",
                                "no model.mm_projector.* keys; LLaVA reports them as newly initialized and the projector "
                                "is random; expected the projector (or mm_projector.bin)")
        if "language_model" in present and "lm_head" not in present:
            yield from self._lm_head(artifact, "lm_head.")

    def _original_tower(self, artifact, config: dict) -> Finding:
        from llava_doctor.schema import resolve_local_tower

        reference = config.get("mm_vision_tower") or config.get("vision_tower")
        if not reference:
            return self._missing(artifact, "vision_tower",
                                 "no model.vision_tower.* keys and no mm_vision_tower in config.json: nothing can rebuild "
                                 "the tower; expected tower weights or a mm_vision_tower reference")
        if config.get("unfreeze_mm_vision_tower"):
            return self._missing(artifact, "vision_tower",
                                 f"no model.vision_tower.* keys although unfreeze_mm_vision_tower is true: the trained tower "
                                 f"was not saved and LLaVA will load the base {reference!r} instead; expected the tower's weights")
        local = resolve_local_tower(reference, artifact.root)
        where = f"resolves to the local directory {local}" if local else (
            "is not a local directory: it must be a hub id or path reachable when loading")
        return self._missing(artifact, "vision_tower",
                             f"no model.vision_tower.* keys; normal for original LLaVA: delay_load rebuilds the frozen tower "
                             f"from mm_vision_tower={reference!r}, which {where}",
                             severity=Severity.INFO)

    def _pretrain(self, artifact, context: Context) -> Finding:
        n = sum(1 for t in artifact.tensors.values() if t.component == "projector")
        if context.stage in FINETUNE_STAGES or context.stage == "lora":
            return self._missing(artifact, "language_model",
                                 f"stage {context.stage} expects language-model weights but only the projector "
                                 f"({n} tensors, pretrain-stage mm_projector.bin) was saved; expected LLM weights")
        return self._missing(artifact, "language_model",
                             f"pretrain-stage checkpoint: only the projector ({n} tensors), no LLM or tower weights; normal "
                             "for stage pretrain: load it with --model-base BASE_LLM (or pass it as "
                             "--pretrain_mm_mlp_adapter to the fine-tune)",
                             severity=Severity.INFO)

    def _xtuner(self, artifact, present: set[str], context: Context) -> Iterable[Finding]:
        keys = artifact.tensors
        if not any(k.startswith("visual_encoder.") for k in keys):
            yield self._missing(artifact, "vision_tower",
                                "no visual_encoder.* keys (trained with freeze_visual_encoder=True): `xtuner convert "
                                "pth_to_hf --save-format huggingface` fails on its strict load; force need_visual_encoder=True "
                                "or convert with --vision_model_id BASE_VIT; expected the base ViT to be supplied at export",
                                severity=Severity.WARNING)
        if "projector" not in present:
            yield self._missing(artifact, "projector",
                                "no projector.* keys although XTuner always saves the projector; expected projector.model.*")
        if not any(k.startswith("llm.") for k in keys):
            if context.stage in FINETUNE_STAGES or context.stage == "lora":
                yield self._missing(artifact, "language_model",
                                    f"stage {context.stage} expects llm.* weights but the .pth has none; expected LLM weights")
            else:
                yield self._missing(artifact, "language_model",
                                    "no llm.* keys (freeze_llm=True, pretrain): the LLM comes from the base `llm` of the "
                                    "XTuner config at export", severity=Severity.INFO)

    def _missing(self, artifact, component: str, detail: str, severity: Severity | None = None) -> Finding:
        return self.finding(
            f"{component}: {detail}",
            artifact=artifact.name,
            location=component,
            severity=severity,
            observed="absent",
            expected="present",
            component=component,
        )
