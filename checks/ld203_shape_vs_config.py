"""LD203: a tensor's shape disagrees with what the checkpoint's config describes."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._live_examples import live, live_context, with_text_vocab
from ._live_examples import hf_llava as hf_llava_live
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
    artifact = ("Checkpoint", "LiveModel")
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
    torch.Size([768, 3, 32, 32])`). On a live model the same rules read the parameters' true shapes
    (`ds_shape` under ZeRO-3), and a tokenizer with more tokens than the embedding has rows (tokens
    added for `<image>` or padding without `resize_token_embeddings(len(tokenizer))`) fails at the
    first such id with `IndexError: index out of range in self` on CPU or `CUDA error: device-side
    assert triggered` on a GPU; fewer tokens than rows (padded vocabularies) is normal.
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
        Example("live: HF llava, tokenizer shorter than the padded embedding", live(hf_llava_live),
                context=live_context(tokenizer_size=100)),
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
        Example("live: tokenizer longer than the embedding", live(hf_llava_live), context=live_context(tokenizer_size=130),
                count=1, contains=("embed_tokens.weight: 128 embedding rows but the tokenizer has 130 tokens",)),  # the name per transformers
        Example("live: vocab_size no longer describes the embedding", live(lambda: with_text_vocab(hf_llava_live(), 100)),
                count=2, contains=("embedding has 128 rows but vocab_size is 100", "lm_head.weight")),
    )

    def run_checkpoint(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.schema import shape_issues

        if not artifact.config:
            return
        issues, notes = shape_issues(artifact, use_schema=bool(context.option("schema", True)))
        yield from self._report(artifact, issues, notes)

    def _report(self, artifact, issues, notes, *, config_name: str = "config.json", qualify=lambda key: "") -> Iterable[Finding]:
        """Findings for shape issues (one pure function, schema.shape_issues, behind both adapters)."""
        for issue in issues:
            info = artifact.tensors.get(issue.key)
            expected = list(issue.expected) if issue.expected is not None else None
            shown = f"; expected {expected}" if expected is not None and issue.rule != "schema" else ""
            yield self.finding(
                f"{issue.key}: shape {list(issue.observed)}{qualify(issue.key)}, {issue.detail}{shown}",
                artifact=artifact.name,
                location=f"{info.file}:{issue.key}" if info and info.file else issue.key,
                observed=list(issue.observed),
                expected=expected,
                rule=issue.rule,
            )
        for note in notes:
            if note.startswith("config not usable") or note.startswith("config could not be built"):
                yield self.finding(
                    f"{config_name}: {note}; shapes not checked against it",
                    artifact=artifact.name,
                    location=config_name,
                    severity=Severity.WARNING,
                    rule="config",
                )

    def run_live_model(self, artifact, context: Context) -> Iterable[Finding]:
        """Live: the same rules on the parameters' true shapes (ds_shape under ZeRO-3), and the embedding vs
        the tokenizer given (`tokenizer_size`): more tokens than rows is an error, fewer is fine."""
        from llava_doctor.schema import shape_issues

        view = artifact.shape_view()
        if view.config:
            partitioned = {p.key for p in artifact.parameters if p.partitioned}
            # XTuner's config is assembled from its parts: the cheap rules only (its projector has no HF schema)
            issues, notes = shape_issues(view, use_schema=artifact.family != "xtuner")
            yield from self._report(view, issues, notes, config_name="model.config",
                                    qualify=lambda key: " (true shape under ZeRO-3)" if key in partitioned else "")
        size = context.option("tokenizer_size")
        if size is None:
            return
        for index, param in enumerate(artifact.parameters):
            if artifact.canonical(index) == "language_model:embed_tokens.weight" and len(param.shape) == 2:
                rows = param.shape[0]
                if size > rows:
                    yield self.finding(
                        f"{param.name}: {rows} embedding rows but the tokenizer has {size} tokens; expected at least {size} "
                        f"rows: ids {rows}..{size - 1} index past the table",
                        artifact=artifact.name, location=param.name, observed=rows, expected=f">= {size}", rule="tokenizer",
                    )
                return
