"""LD202: a whole component's weights (vision tower, projector, LLM, lm_head) are missing."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.checkpoint import CheckpointFile
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


def _ex(keys, config=None, file="model.safetensors", files=None):
    return lambda: checkpoint(keys(), config=config() if callable(config) else config, file=file)


def _stage(stage: str):
    return lambda: Context(stage=stage)


def _empty(file: str, size: int, *, adapter: bool = False, others: tuple[str, ...] = ()):
    """A checkpoint whose weight file holds no tensors (save_file({}), torch.save({}), an empty PEFT adapter)."""
    def build():
        tensors = original_llava() if others else {}
        ckpt = checkpoint(tensors, config=None if adapter else hf_llava_config(), file=others[0] if others else file)
        ckpt.files = [CheckpointFile(file, size, "safetensors" if file.endswith(".safetensors") else "torch"),
                      *(CheckpointFile(o, 1000, "torch") for o in others)]
        ckpt.file_tensors = {file: 0, **{o: len(tensors) for o in others}}
        if adapter:
            ckpt.adapter_config = {"peft_type": "LORA", "base_model_name_or_path": "lmsys/vicuna-7b-v1.5"}
        return ckpt

    return build


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
    checkpoint ... newly initialized: ['model.mm_projector...']`. The extreme case is a weight
    file with no tensors at all: `save_file({})` / `torch.save({})` of a state dict that a ZeRO-3
    save filtered down to nothing, the 40-byte `adapter_model.safetensors` of huggingface/trl#4416
    and the 443-byte `adapter_model.bin` of huggingface/peft#286 (`get_peft_model_state_dict`
    under ZeRO-3 without gathering). PEFT loads such an adapter with only a warning (`Found
    missing adapter keys while loading the checkpoint`) and the model runs as its untouched base;
    transformers random-initialises every weight. Every component is
    missing, so this is reported here rather than as LD201 (whose tensors exist with shape [0]).
    For original LLaVA the finding says what the loader the config implies will do with a tower
    that is not in the checkpoint: a delay-loaded tower is rebuilt from `mm_vision_tower` (which
    must resolve where the model is loaded, or the builder raises `ValueError: Unknown vision
    tower`); an eagerly built one stays uninitialised, which LD304 reports.
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
        Example("LLaVA-NeXT without tower weights, eager tower load (LD304's)",
                _ex(original_llava, lambda: original_llava_config(delay_load=False))),
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
                count=1, contains=("delay-loads", "openai/clip-vit-large-patch14-336", "downloaded")),
        Example("original LLaVA whose tower reference does not resolve",
                _ex(original_llava, lambda: original_llava_config(vision_tower="/data/train-node/clip-vit-l")), count=1,
                contains=("ValueError: Unknown vision tower: /data/train-node/clip-vit-l",)),
        Example("safetensors file with no tensors (save_file({}))", _empty("model.safetensors", 40), count=1,
                contains=("model.safetensors (40 bytes) holds no tensors", "every component")),
        Example("PEFT adapter folder with an empty adapter_model.bin", _empty("adapter_model.bin", 443, adapter=True),
                count=1, contains=("adapter_model.bin (443 bytes) holds no tensors", "PEFT loads it with only a warning", "base model")),
        Example("an empty mm_projector.bin beside a full checkpoint",
                _empty("mm_projector.bin", 700, others=("model.safetensors",)), count=2,
                contains=("mm_projector.bin (700 bytes) holds no tensors",)),
        Example("original LLaVA whose trained tower was not saved",
                _ex(original_llava, lambda: original_llava_config(unfreeze_mm_vision_tower=True)), count=1,
                contains=("unfreeze_mm_vision_tower",)),
        Example("original LLaVA without projector", _ex(lambda: original_llava(projector=False), original_llava_config),
                count=2, contains=("mm_projector", "newly initialized")),
        Example("LLaVA LoRA without non_lora_trainables.bin", _ex(lambda: llava_lora(non_lora_trainables=False),
                                                                  original_llava_config, file="adapter_model.safetensors"),
                count=1, contains=("non_lora_trainables.bin", "projector")),
        Example("pretrain mm_projector.bin", _ex(lambda: original_llava(llm=False), original_llava_config,
                                                 file="mm_projector.bin"), count=2,
                contains=("--model-base", "delay-loads it (LLaVA always delay-loads a frozen tower)")),
        Example("pretrain projector audited as a fine-tune", _ex(lambda: original_llava(llm=False), original_llava_config,
                                                                 file="mm_projector.bin"),
                context=_stage("finetune"), count=2, contains=("stage finetune",)),
    )

    def run_checkpoint(self, artifact, context: Context) -> Iterable[Finding]:
        empty = sorted(f for f, n in artifact.file_tensors.items() if n == 0)
        if empty:
            yield self._no_tensors(artifact, empty)
        if not artifact.tensors or artifact.is_lone_shard():
            return  # nothing to classify; one shard of a sharded set holds only some components by construction
        present = artifact.components_present()
        layout = artifact.layout
        if layout in HF_LAYOUTS:
            yield from self._hf(artifact, present)
        elif layout == "llava-original":
            yield from self._original(artifact, present)
        elif layout == "llava-original-pretrain":
            yield self._pretrain(artifact, context)
            tower = self._original_tower(artifact, artifact.config or {})
            if tower is not None:
                yield tower
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

    def _no_tensors(self, artifact, empty: list[str]) -> Finding:
        sizes = {f.path: f.size for f in artifact.files}
        shown = ", ".join(f"{f} ({sizes.get(f, 0):,} bytes)" for f in empty)
        if artifact.adapter_config is not None or any(f.startswith("adapter_model.") for f in empty):
            consequence = ("PEFT loads it with only a warning (`Found missing adapter keys while loading the checkpoint`) "
                           "and the model runs as its untouched base model, LoRA B starting at zero (adapters saved "
                           "under ZeRO-3 without gathering, huggingface/trl#4416)")
        elif artifact.tensors:
            consequence = "whatever it was meant to hold is not there"
        else:
            consequence = ("every component is missing: from_pretrained random-initialises every weight "
                           "(a state dict that a ZeRO-3 save filtered down to nothing)")
        return self.finding(
            f"{shown} holds no tensors: {consequence}; expected the saved weights",
            artifact=artifact.name, location=empty[0], observed="0 tensors", expected="tensors",
            component="all" if not artifact.tensors else "other", files=empty,
            fix="Save the weights again with ZeRO-3 parameters gathered: set \"stage3_gather_16bit_weights_on_model_save\": "
                "true (the Trainer and PEFT then save full tensors), or save inside deepspeed.zero.GatheredParameters; "
                "for an existing DeepSpeed run rebuild them with zero_to_fp32.py.",
        )

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
            tower = self._original_tower(artifact, config)
            if tower is not None:
                yield tower
        if "projector" not in present and config.get("mm_projector_type") != "identity":
            yield self._missing(artifact, "projector",
                                "no model.mm_projector.* keys; LLaVA reports them as newly initialized and the projector "
                                "is random; expected the projector (or mm_projector.bin)")
        if "language_model" in present and "lm_head" not in present:
            yield from self._lm_head(artifact, "lm_head.")

    def _original_tower(self, artifact, config: dict) -> Finding | None:
        from llava_doctor.layout import vision_tower_unfrozen
        from llava_doctor.tower_loading import tower_load

        load = tower_load(config, root=artifact.root)
        if load is None or load.reference is None:
            return self._missing(artifact, "vision_tower",
                                 "no model.vision_tower.* keys and no mm_vision_tower in config.json: nothing can rebuild "
                                 "the tower; expected tower weights or a mm_vision_tower reference")
        if vision_tower_unfrozen(config):
            return self._missing(artifact, "vision_tower",
                                 f"no model.vision_tower.* keys although the tower was trained ({load.why}): the trained "
                                 f"tower was not saved and is lost (the loader builds it eagerly and leaves it "
                                 f"uninitialised, LD304); expected the tower's weights")
        if load.eager:
            return None  # the loader leaves the tower uninitialised: LD304 says so
        reference = load.reference
        if load.resolves == "unknown":
            return self._missing(artifact, "vision_tower",
                                 f"no model.vision_tower.* keys; {load.codebase} delay-loads the frozen tower ({load.why}) "
                                 f"from mm_vision_tower={reference!r}, which does not resolve here: its builder raises "
                                 f"`ValueError: Unknown vision tower: {reference}` unless that path exists where the model is "
                                 f"loaded; expected a reachable tower reference",
                                 severity=Severity.WARNING)
        where = (f"from the local folder {reference}" if load.resolves == "local"
                 else f"{reference!r}, downloaded from the hub at load time")
        return self._missing(artifact, "vision_tower",
                             f"no model.vision_tower.* keys; normal for a frozen tower: {load.codebase} delay-loads it "
                             f"({load.why}) and load_model() then loads the base encoder {where}",
                             severity=Severity.INFO)

    def _pretrain(self, artifact, context: Context) -> Finding:
        n = sum(1 for t in artifact.tensors.values() if t.component == "projector")
        if context.stage in FINETUNE_STAGES or context.stage == "lora":
            return self._missing(artifact, "language_model",
                                 f"stage {context.stage} expects language-model weights but only the projector "
                                 f"({n} tensors, pretrain-stage mm_projector.bin) was saved; expected LLM weights")
        return self._missing(artifact, "language_model",
                             f"pretrain-stage checkpoint: only the projector ({n} tensors), no LLM weights; normal "
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
