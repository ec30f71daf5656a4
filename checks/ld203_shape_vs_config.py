"""LD203: a tensor's shape disagrees with what the checkpoint's config describes."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import (
    checkpoint, hf_llava, hf_llava_config, original_llava, original_llava_config, siglip_tower,
)


def _hf(vocab: int = 1000, config_vocab: int = 1000, **config):
    return lambda: checkpoint(hf_llava(vocab=vocab), config=hf_llava_config(vocab=config_vocab, **config))


def _siglip_config_clip_tower():
    return checkpoint(hf_llava(), config=hf_llava_config(family="siglip"))


def _siglip_consistent():
    keys = {k: v for k, v in hf_llava().items() if not k.startswith("vision_tower.")}
    keys.update(siglip_tower("vision_tower."))
    return checkpoint(keys, config=hf_llava_config(family="siglip"))


def _original(mm_hidden: int = 96):
    return lambda: checkpoint(original_llava(), config=original_llava_config(mm_hidden=mm_hidden))


def _original_siglip_name_clip_tower():
    return checkpoint(original_llava(tower=True), config=original_llava_config(vision_tower="google/siglip-so400m-patch14-384"))


def _cheap_only() -> Context:
    return Context(options={"schema": False})


class ShapeVsConfig(Check):
    code = "LD203"
    title = "tensor shape disagrees with the config"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    rationale = """
    A checkpoint whose tensor shapes disagree with its own config.json cannot be loaded as the
    config says. transformers 5 prints a LOAD REPORT row `MISMATCH | Reinit due to size mismatch -
    ckpt: torch.Size([64, 32]) vs model:torch.Size([64, 64])` and raises `RuntimeError: You set
    `ignore_mismatched_sizes` to `False`, thus raising an error.`; with
    `ignore_mismatched_sizes=True` it silently re-initialises the tensor at random. Plain
    `load_state_dict` raises `size mismatch for ...: copying a param with shape ... from
    checkpoint, the shape in current model is ...`. Typical causes: the embedding was resized
    for added tokens but `vocab_size` was not updated, `mm_hidden_size` does not match the vision
    tower that produced the features, a projector built for another LLM, or a SigLIP tower built
    as CLIP (LLaVA-NeXT's builder picks CLIPVisionTower for any local path, so users see
    `size mismatch for vision_model.embeddings.patch_embedding.weight: copying a param with shape
    torch.Size([1152, 3, 14, 14]) from checkpoint, the shape in current model is
    torch.Size([768, 3, 32, 32])`).
    """
    fix = """
    Make config.json describe the weights: set `vocab_size` (text_config.vocab_size) to the
    embedding rows after `resize_token_embeddings`, `mm_hidden_size` to the tower's hidden size,
    the projector type/sizes to the trained projector, and the vision config (or mm_vision_tower)
    to the tower family that was trained (SigLIP vs CLIP). If the config is right, the weights come
    from another model: re-export them from the matching training run.
    """
    valid = (
        Example("consistent HF llava", _hf()),
        Example("consistent SigLIP tower", _siglip_consistent),
        Example("consistent original llava", _original()),
        Example("consistent original llava, cheap rules only", _original(), context=_cheap_only),
    )
    invalid = (
        Example("embedding resized without vocab_size", _hf(vocab=1008, config_vocab=1000), count=2,
                contains=("language_model.model.embed_tokens.weight", "1008 rows but vocab_size is 1000",
                          "language_model.lm_head.weight")),
        Example("mm_hidden_size disagrees with the projector", _original(mm_hidden=128), context=_cheap_only, count=1,
                contains=("model.mm_projector.0.weight", "projector input is 96 but mm_hidden_size is 128")),
        Example("SigLIP config, CLIP-shaped tower", _siglip_config_clip_tower, count=1,
                contains=("shaped like CLIP", "describes SIGLIP")),
        Example("original LLaVA with a SigLIP mm_vision_tower and a CLIP tower", _original_siglip_name_clip_tower,
                context=_cheap_only, count=1, contains=("model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight",
                                                       "shaped like CLIP")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.schema import shape_issues

        if not artifact.config:
            return
        issues, notes = shape_issues(artifact, use_schema=bool(context.option("schema", True)))
        for issue in issues:
            info = artifact.tensors.get(issue.key)
            expected = list(issue.expected) if issue.expected is not None else None
            shown = f"; expected {expected}" if expected is not None and issue.rule != "schema" else ""
            yield self.finding(
                f"{issue.key}: shape {list(issue.observed)}, {issue.detail}{shown}",
                artifact=artifact.name,
                location=f"{info.file}:{issue.key}" if info else issue.key,
                observed=list(issue.observed),
                expected=expected,
                rule=issue.rule,
            )
        for note in notes:
            if note.startswith("config not usable") or note.startswith("config could not be built"):
                yield self.finding(
                    f"config.json: {note}; shapes not checked against it",
                    artifact=artifact.name,
                    location="config.json",
                    severity=Severity.WARNING,
                    rule="config",
                )
