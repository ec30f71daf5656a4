"""Expected tensor shapes from a checkpoint's config, and where the checkpoint disagrees with them.

Two levels:

* cheap rules, pure and torch-free: embedding/lm_head rows vs ``vocab_size``, projector input vs
  ``mm_hidden_size`` (or ``vision_config.hidden_size``), projector output vs the text hidden size,
  the vision patch embedding vs the vision config, and the tower family (SigLIP has a
  ``patch_embedding.bias`` and no ``class_embedding``/``pre_layrnorm``; CLIP the reverse);
* the full schema: the model the config describes, built on the meta device (no memory, no
  download, no hub), its state-dict shapes mapped onto the checkpoint's key layout.

Keys are compared in a canonical form ``component:rest`` (e.g. ``vision_tower:embeddings.patch_embedding.weight``,
``language_model:layers.0.mlp.up_proj.weight``, ``lm_head:weight``): the checkpoint's layout prefix
is removed and so is the ``vision_model.`` level that transformers 4.x puts in vision towers.

An original-LLaVA config (flat Llama/Qwen2 fields + ``mm_*``) is never handed to AutoConfig
(transformers 5 turns it into a 7B LlavaConfig, see layout.config_kind); its LLM is built from the
flat fields with the matching text config class, its projector from ``mm_projector_type``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .artifacts.checkpoint import Checkpoint, TensorInfo
from .layout import canonical_key, config_kind as classify_config, detect_layout

# Bounds for the config sanity guard; beyond them a config is garbage, not a model. They also bound
# the meta-device build: its time and memory grow with the number of modules (layers x experts),
# not with the sizes (measured: a 1024-layer 8192-hidden Llama builds on meta in 2.6 s, +0 MB).
MAX_DIM = 1 << 20
MAX_VOCAB = 1 << 24
MAX_LAYERS = 1024
MAX_EXPERTS = 1024
MAX_BLOCKS = 1 << 16  # layers x experts of one sub-model
MAX_PARAMS = 10**13
_MAX_CONFIG_DEPTH = 4
# A config implying this many times more parameters than a full checkpoint holds does not describe it.
MAX_PARAM_RATIO = 100

@dataclass(frozen=True)
class ShapeIssue:
    key: str  # the checkpoint key
    observed: tuple[int, ...]
    expected: tuple[int, ...] | None
    rule: str  # vocab | hidden | projector-in | projector-out | tower-hidden | patch-embedding | tower-family | schema
    detail: str  # one line: what disagrees with which config field


@dataclass
class Schema:
    expected: dict[str, tuple[int, ...]] = field(default_factory=dict)  # canonical key -> shape
    source: str = ""  # what was built, e.g. "LlavaForConditionalGeneration on meta"
    notes: list[str] = field(default_factory=list)  # why parts were not built


# ----------------------------------------------------------------------------- config reading

def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text_config(config: Mapping[str, Any], kind: str | None) -> dict[str, Any]:
    """The fields of the language model: the nested text_config (HF) or the flat top level."""
    if kind in ("hf-llava", "hf-llava-next", "hf-llava-onevision"):
        return _dict(config.get("text_config"))
    return dict(config)


def tied_embeddings(config: Mapping[str, Any] | None, kind: str | None) -> bool:
    """transformers ORs the top-level and text_config flags (notes/transformers_llava.md §1.5)."""
    if not config:
        return False
    text = text_config(config, kind)
    return bool(config.get("tie_word_embeddings")) or bool(text.get("tie_word_embeddings"))


def _vision_config_dict(config: Mapping[str, Any], kind: str | None, root: str | None) -> tuple[dict[str, Any], str]:
    """The vision config and where it came from ("" when unknown)."""
    if kind in ("hf-llava", "hf-llava-next", "hf-llava-onevision"):
        vc = _dict(config.get("vision_config"))
        return vc, "vision_config" if vc else ""
    if kind == "llava-original":
        local = resolve_local_tower(config.get("mm_vision_tower"), root)
        if local:
            from .artifacts.readers import MAX_CONFIG_BYTES
            from .files import read_json
            from .findings import InputError

            try:  # a regular file of bounded size only: the tower folder is as untrusted as the checkpoint
                tower = read_json(os.path.join(local, "config.json"), limit=MAX_CONFIG_BYTES, what="tower config")
            except InputError:
                return {}, ""
            if isinstance(tower, dict):
                if tower.get("model_type") in ("clip", "siglip") and isinstance(tower.get("vision_config"), dict):
                    vc = dict(tower["vision_config"])
                    vc.setdefault("model_type", f"{tower['model_type']}_vision_model")
                    return vc, f"{local}/config.json"
                return tower, f"{local}/config.json"
    return {}, ""


def resolve_local_tower(reference: Any, root: str | None = None) -> str | None:
    """The local directory `mm_vision_tower` names, if it exists here with a config.json."""
    if not isinstance(reference, str) or not reference:
        return None
    candidates = [reference] if os.path.isabs(reference) else [reference] + ([os.path.join(root, reference)] if root else [])
    for path in candidates:
        if os.path.isfile(os.path.join(path, "config.json")):
            return os.path.abspath(path)
    return None


def vision_family_of_config(vc: Mapping[str, Any], reference: Any = None) -> str | None:
    model_type = str(vc.get("model_type") or "")
    if model_type.startswith("siglip"):
        return "siglip"
    if model_type.startswith("clip"):
        return "clip"
    if isinstance(reference, str):  # original LLaVA picks the tower class from the name
        lowered = reference.lower()
        if "siglip" in lowered:
            return "siglip"
        if "clip" in lowered:
            return "clip"
    return None


def tower_family_of_keys(tower_keys: Iterable[str]) -> str | None:
    """`clip` / `siglip` from canonical tower keys (without `vision_tower:`), None if undecidable."""
    keys = set(tower_keys)
    clip_marks = any(k == "embeddings.class_embedding" or k.startswith("pre_layrnorm.") for k in keys)
    siglip_marks = "embeddings.patch_embedding.bias" in keys or any(k.startswith("head.") for k in keys)
    if clip_marks and not siglip_marks:
        return "clip"
    if siglip_marks and not clip_marks:
        return "siglip"
    return None


_NAMED_LIMITS = {
    "hidden_size": MAX_DIM, "intermediate_size": MAX_DIM * 8, "num_hidden_layers": MAX_LAYERS,
    "num_attention_heads": MAX_DIM, "num_key_value_heads": MAX_DIM, "vocab_size": MAX_VOCAB,
    "image_size": MAX_DIM, "patch_size": MAX_DIM, "mm_hidden_size": MAX_DIM, "num_channels": 64,
}


def _count_limit(name: str) -> int | None:
    """Upper bound for an integer config field by what its name counts (None: not a count the build depends on)."""
    lowered = name.lower()
    if lowered in _NAMED_LIMITS:
        return _NAMED_LIMITS[lowered]
    if "expert" in lowered:
        return MAX_EXPERTS
    if lowered.endswith(("layers", "n_layer", "depth")):  # counts; `*_layer` fields are indices (-2)
        return MAX_LAYERS
    if lowered.endswith(("_size", "_dim", "_dims", "position_embeddings", "_heads", "_channels")):
        return MAX_VOCAB
    return None


def section_problems(section: Mapping[str, Any], prefix: str = "", depth: int = 0) -> list[str]:
    """Fields of one config section (and its nested sections) outside the bounds a real model fits in."""
    problems: list[str] = []
    layers = experts = 1
    for name, value in section.items():
        if isinstance(value, Mapping) and depth < _MAX_CONFIG_DEPTH:
            problems.extend(section_problems(value, f"{prefix}{name}.", depth + 1))
            continue
        limit = _count_limit(str(name))
        required = str(name) in _NAMED_LIMITS  # these must be positive; other counts may be 0 (no experts)
        if limit is None or value is None or (not required and _int(value) is None):
            continue  # a field matched by its name only is bounded when it is an integer
        if _int(value) is None or not (0 < value if required else 0 <= value) or value > limit:
            problems.append(f"{prefix}{name}={value!r} is not an integer in {1 if required else 0}..{limit}")
            continue
        if "expert" in str(name).lower() and "per_tok" not in str(name).lower():
            experts = max(experts, value)
        elif limit == MAX_LAYERS and "expert" not in str(name).lower():
            layers = max(layers, value)
    if layers * experts > MAX_BLOCKS:
        problems.append(f"{prefix.rstrip('.') or 'config'} declares {layers} layers x {experts} experts, more than "
                        f"{MAX_BLOCKS} blocks")
    return problems


def config_problems(config: Mapping[str, Any] | None, kind: str | None) -> list[str]:
    """Why a config cannot describe a model (non-positive or absurd sizes and counts, at any depth); [] if sane.

    Every integer field whose name says it counts layers, experts, heads or a size is bounded, in
    every section (text_config, vision_config, their nested configs), so that building the schema
    on the meta device stays bounded whatever the config declares.
    """
    if not config:
        return []
    return section_problems(config)


def implied_parameters(config: Mapping[str, Any], kind: str | None) -> int:
    """A rough parameter count of the language model the config describes (0 if unknown)."""
    text = text_config(config, kind)
    h, i, n, v = (_int(text.get(k)) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    if not (h and n and v):
        return 0
    return 2 * v * h + n * (4 * h * h + 3 * h * (i or 4 * h))


# ----------------------------------------------------------------------------- values a fresh model holds

# Which tensors a freshly initialised model holds as exact zeros, by name. tests/test_checks_checkpoint.py
# derives the zeros from the real classes' initialisation (Llava, LlavaNext, LlavaOnevision with a
# SigLIP attention-pooling head, CLIP, SigLIP, Llama, Qwen2) and checks that this table covers them:
# every one is a bias (`*.bias`; nn.MultiheadAttention's `in_proj_bias` and `out_proj.bias`). Outside
# the classes: PEFT starts LoRA B at zero, and a 0-d scalar carries no pattern.
ZERO_BY_DESIGN = (
    ("bias", "a bias: Linear, LayerNorm, conv and attention biases start at 0 (MultiheadAttention's in_proj_bias too)"),
    ("lora_B", "PEFT initialises LoRA B to zero"),
    ("lora_embedding_B", "PEFT initialises LoRA B to zero"),
)


def zero_by_design(name: str, ndim: int) -> bool:
    """Whether an all-zero tensor named `name` is what a freshly initialised model holds (no defect)."""
    if ndim == 0:
        return True
    leaf = name.rsplit(".", 1)[-1]
    parts = name.split(".")
    return leaf.endswith("bias") or "lora_B" in parts or "lora_embedding_B" in parts


# ----------------------------------------------------------------------------- cheap rules

def _canonical_tensors(checkpoint: Checkpoint) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for info in checkpoint.tensors.values():
        key = canonical_key(info.name, checkpoint.layout)
        if key is not None and not info.is_empty:
            out.setdefault(key, info)
    return out


def _projector_linears(canon: Mapping[str, TensorInfo]) -> list[TensorInfo]:
    """The projector's 2-D weights in forward order (`linear_1`, `linear_2` / `0`, `2` / plain `weight`)."""
    found: list[tuple[int, TensorInfo]] = []
    for key, info in canon.items():
        if not key.startswith("projector:") or len(info.shape) != 2:
            continue
        rest = key[len("projector:"):]
        m = re.fullmatch(r"(?:linear_(\d+)\.|(\d+)\.)?weight", rest)
        if m:
            found.append((int(m.group(1) or m.group(2) or 0), info))
    return [info for _, info in sorted(found, key=lambda p: p[0])]


def cheap_issues(checkpoint: Checkpoint) -> list[ShapeIssue]:
    """Torch-free disagreements between the checkpoint's shapes and its config."""
    config = checkpoint.config
    if not config:
        return []
    kind = checkpoint.config_kind or classify_config(config)
    if config_problems(config, kind):
        return []
    canon = _canonical_tensors(checkpoint)
    text = text_config(config, kind)
    vocab, hidden = _int(text.get("vocab_size")), _int(text.get("hidden_size"))
    issues: list[ShapeIssue] = []

    for key, label in (("language_model:embed_tokens.weight", "embedding"), ("lm_head:weight", "lm_head")):
        info = canon.get(key)
        if info is None or len(info.shape) != 2:
            continue
        rows, cols = info.shape
        if vocab and rows != vocab:
            issues.append(ShapeIssue(info.name, info.shape, (vocab, hidden or cols), "vocab",
                                     f"{label} has {rows} rows but vocab_size is {vocab}"))
        elif hidden and cols != hidden:
            issues.append(ShapeIssue(info.name, info.shape, (vocab or rows, hidden), "hidden",
                                     f"{label} has {cols} columns but the text hidden_size is {hidden}"))

    vc, _ = _vision_config_dict(config, kind, checkpoint.root)
    vision_hidden = _int(vc.get("hidden_size"))
    tower_keys = {k[len("vision_tower:"):]: v for k, v in canon.items() if k.startswith("vision_tower:")}
    patch = tower_keys.get("embeddings.patch_embedding.weight")
    observed_tower_hidden = patch.shape[0] if patch is not None and len(patch.shape) == 4 else None

    if kind == "llava-original":
        projector_in, source = _int(config.get("mm_hidden_size")), "mm_hidden_size"
    else:
        layers = config.get("vision_feature_layer")
        factor = len(layers) if isinstance(layers, list) and layers else 1
        projector_in = vision_hidden * factor if vision_hidden else None
        source = "vision_config.hidden_size" + (f" x {factor} feature layers" if factor > 1 else "")
    linears = _projector_linears(canon)
    if linears:
        first, last = linears[0], linears[-1]
        if projector_in and first.shape[1] != projector_in:
            issues.append(ShapeIssue(first.name, first.shape, (first.shape[0], projector_in), "projector-in",
                                     f"projector input is {first.shape[1]} but {source} is {projector_in}"))
        if hidden and last.shape[0] != hidden:
            issues.append(ShapeIssue(last.name, last.shape, (hidden, last.shape[1]), "projector-out",
                                     f"projector output is {last.shape[0]} but the text hidden_size is {hidden}"))
    if kind == "llava-original" and projector_in and observed_tower_hidden and observed_tower_hidden != projector_in:
        issues.append(ShapeIssue(patch.name, patch.shape, (projector_in, *patch.shape[1:]), "tower-hidden",
                                 f"vision tower hidden size is {observed_tower_hidden} but mm_hidden_size is {projector_in}"))

    family = vision_family_of_config(vc, config.get("mm_vision_tower") if kind == "llava-original" else None)
    observed_family = tower_family_of_keys(tower_keys)
    if family and observed_family and family != observed_family:
        info = patch or next(iter(tower_keys.values()))
        issues.append(ShapeIssue(info.name, info.shape, None, "tower-family",
                                 f"vision tower is shaped like {observed_family.upper()} but the config describes "
                                 f"{family.upper()} ({_family_marks(observed_family)})"))
    elif patch is not None and vc and len(patch.shape) == 4:
        p, ch = _int(vc.get("patch_size")), _int(vc.get("num_channels")) or 3
        want = (vision_hidden or patch.shape[0], ch, p or patch.shape[2], p or patch.shape[3])
        if tuple(patch.shape) != want:
            issues.append(ShapeIssue(patch.name, patch.shape, want, "patch-embedding",
                                     f"patch embedding is {list(patch.shape)} but the vision config implies {list(want)}"))
    return issues


def _family_marks(family: str) -> str:
    if family == "clip":
        return "it has class_embedding/pre_layrnorm and no patch_embedding.bias"
    return "it has patch_embedding.bias and no class_embedding/pre_layrnorm"


# ----------------------------------------------------------------------------- meta build

_HF_MODEL_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}
_ORIGINAL_TEXT_TYPES = {  # original LLaVA model_type / architecture -> transformers text model_type
    "llava": "llama", "llava_llama": "llama", "llava_qwen": "qwen2", "llava_mistral": "mistral",
    "LlavaLlamaForCausalLM": "llama", "LlavaQwenForCausalLM": "qwen2", "LlavaMistralForCausalLM": "mistral",
}


def _original_text_type(config: Mapping[str, Any]) -> str | None:
    for arch in config.get("architectures") or []:
        if arch in _ORIGINAL_TEXT_TYPES:
            return _ORIGINAL_TEXT_TYPES[arch]
    return _ORIGINAL_TEXT_TYPES.get(str(config.get("model_type")))


def _strip_meta_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    drop = {"model_type", "architectures", "auto_map", "transformers_version", "_name_or_path"}
    return {k: v for k, v in config.items() if k not in drop and not k.startswith("mm_")}


def _canonical_memory_keys(state: Mapping[str, Any], layout: str) -> dict[str, tuple[int, ...]]:
    canonical = ((canonical_key(key, layout), tuple(tensor.shape)) for key, tensor in state.items())
    return {key: shape for key, shape in canonical if key is not None}


def original_projector_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Projector shapes of original LLaVA's build_vision_projector, from mm_projector_type."""
    kind = str(config.get("mm_projector_type") or "linear")
    mm, hidden = _int(config.get("mm_hidden_size")), _int(config.get("hidden_size"))
    if not (mm and hidden):
        return {}
    if kind == "linear":
        return {"projector:weight": (hidden, mm), "projector:bias": (hidden,)}
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if m:
        out: dict[str, tuple[int, ...]] = {}
        for i in range(int(m.group(1))):
            out[f"projector:{2 * i}.weight"] = (hidden, mm if i == 0 else hidden)
            out[f"projector:{2 * i}.bias"] = (hidden,)
        return out
    return {}  # identity has no weights; other types (pooler, resamplers) are not modelled


SCHEMA_NOTE = "schema"


def cached_schema(checkpoint: Checkpoint) -> Schema:
    """build_schema once per checkpoint (LD201 and LD203 both read it)."""
    cached = checkpoint.notes.get(SCHEMA_NOTE)
    if isinstance(cached, Schema):
        return cached
    schema = build_schema(checkpoint)
    checkpoint.notes[SCHEMA_NOTE] = schema
    return schema


def missing_from_schema(checkpoint: Checkpoint, schema: Schema) -> dict[str, tuple[int, list[str]]]:
    """Component -> (tensors the config describes, canonical keys of those not in the checkpoint at all).

    Zero-size tensors count as present (they are LD201's); a tied lm_head is not expected.
    """
    present = {canonical_key(t.name, checkpoint.layout) for t in checkpoint.tensors.values()}
    tied = tied_embeddings(checkpoint.config, checkpoint.config_kind or classify_config(checkpoint.config))
    out: dict[str, tuple[int, list[str]]] = {}
    for key in sorted(schema.expected):
        component = key.split(":", 1)[0]
        if component == "lm_head" and tied:
            continue
        total, missing = out.get(component, (0, []))
        out[component] = (total + 1, missing + ([key] if key not in present else []))
    return out


def build_schema(checkpoint: Checkpoint) -> Schema:
    """Expected shapes of the model the checkpoint's config describes, built on the meta device."""
    config = checkpoint.config
    schema = Schema()
    if not config:
        schema.notes.append("no config.json: shapes not checked against a config")
        return schema
    kind = checkpoint.config_kind or classify_config(config)
    problems = config_problems(config, kind)
    if problems:
        schema.notes.append("config not usable: " + "; ".join(problems))
        return schema
    held = sum(t.numel for t in checkpoint.tensors.values() if t.component in ("language_model", "lm_head"))
    implied = implied_parameters(config, kind)
    if implied > MAX_PARAMS or (held and implied > MAX_PARAM_RATIO * held):
        schema.notes.append(f"config implies ~{implied:,} language-model parameters but the checkpoint holds {held:,}: not built")
        return schema
    try:
        if kind in ("hf-llava", "hf-llava-next", "hf-llava-onevision"):
            _build_hf(config, schema)
        elif kind == "llava-original":
            _build_original(config, schema, checkpoint.root)
        elif checkpoint.layout in ("xtuner", "llm-only") and config.get("model_type"):
            _build_text_only(config, schema)
        else:
            schema.notes.append(f"config kind {kind} has no schema")
    except Exception as exc:  # a config transformers rejects is a note, never a traceback
        schema.notes.append(f"config could not be built: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return schema


def _meta_state(build: Any) -> dict[str, Any]:
    import torch

    with torch.device("meta"):
        model = build()
    return model.state_dict()


def _quiet_transformers() -> Any:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    return transformers


def _build_hf(config: Mapping[str, Any], schema: Schema) -> None:
    transformers = _quiet_transformers()
    model_type = str(config.get("model_type"))
    config_class = transformers.CONFIG_MAPPING[model_type]
    cfg = config_class.from_dict(dict(config))
    model_class = getattr(transformers, _HF_MODEL_CLASSES[model_type])
    state = _meta_state(lambda: model_class(cfg))
    # 5.x names the modules model.vision_tower.*, 4.x vision_tower.vision_model.*: read whichever this is
    schema.expected.update(_canonical_memory_keys(state, detect_layout(state)))
    schema.source = f"{model_class.__name__} on meta"


def _text_model_state(transformers: Any, text_type: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    cfg = transformers.CONFIG_MAPPING[text_type](**fields)
    return _meta_state(lambda: transformers.AutoModelForCausalLM.from_config(cfg))


def _build_original(config: Mapping[str, Any], schema: Schema, root: str | None) -> None:
    schema.expected.update(original_projector_shapes(config))
    text_type = _original_text_type(config)
    transformers = _quiet_transformers()
    if text_type is None:
        schema.notes.append(f"original-LLaVA model_type {config.get('model_type')!r} not modelled: LLM not built")
    else:
        state = _text_model_state(transformers, text_type, _strip_meta_fields(config))
        schema.expected.update(_canonical_memory_keys(state, "llm-only"))
        schema.source = f"{text_type} LLM from the flat config on meta + {config.get('mm_projector_type') or 'linear'} projector"
    vc, where = _vision_config_dict(config, "llava-original", root)
    if not vc:
        schema.notes.append(f"vision tower {config.get('mm_vision_tower')!r} has no local config: tower shapes not checked")
        return
    problems = section_problems(vc)
    if problems:
        schema.notes.append(f"vision tower config {where} not usable: " + "; ".join(problems) + ": tower not built")
        return
    vision_type = str(vc.get("model_type") or "clip_vision_model")
    if vision_type not in ("clip_vision_model", "siglip_vision_model"):
        schema.notes.append(f"vision tower type {vision_type!r} in {where} not modelled")
        return
    vcfg = transformers.CONFIG_MAPPING[vision_type].from_dict(vc)
    model_class = transformers.CLIPVisionModel if vision_type == "clip_vision_model" else transformers.SiglipVisionModel
    state = _meta_state(lambda: model_class(vcfg))
    schema.expected.update(_canonical_memory_keys(state, "vision-only"))


def _build_text_only(config: Mapping[str, Any], schema: Schema) -> None:
    transformers = _quiet_transformers()
    text_type = str(config.get("model_type"))
    if text_type not in transformers.CONFIG_MAPPING:
        schema.notes.append(f"model_type {text_type!r} unknown to transformers: not built")
        return
    state = _text_model_state(transformers, text_type, _strip_meta_fields(config))
    schema.expected.update(_canonical_memory_keys(state, "llm-only"))
    schema.source = f"{text_type} LLM on meta"


def schema_issues(checkpoint: Checkpoint, schema: Schema) -> list[ShapeIssue]:
    """Checkpoint tensors whose shape differs from the schema's (zero-size tensors are LD201's)."""
    issues = []
    for key, info in sorted(_canonical_tensors(checkpoint).items()):
        expected = schema.expected.get(key)
        if expected is not None and tuple(info.shape) != expected:
            issues.append(ShapeIssue(info.name, info.shape, expected, "schema",
                                     f"{schema.source or 'the config'} expects {list(expected)}"))
    return issues


def shape_issues(checkpoint: Checkpoint, *, use_schema: bool = True) -> tuple[list[ShapeIssue], list[str]]:
    """Every disagreement (cheap rules first, then the meta-built schema for keys not yet reported), and notes."""
    issues = cheap_issues(checkpoint)
    notes: list[str] = []
    problems = config_problems(checkpoint.config, checkpoint.config_kind or classify_config(checkpoint.config))
    if problems:
        return issues, ["config not usable: " + "; ".join(problems)]
    if use_schema and checkpoint.config:
        schema = cached_schema(checkpoint)
        notes.extend(schema.notes)
        seen = {i.key for i in issues}
        # a tower of the wrong family disagrees everywhere; its one family finding says why
        wrong_tower = any(i.rule == "tower-family" for i in issues)
        issues.extend(
            i for i in schema_issues(checkpoint, schema)
            if i.key not in seen and not (wrong_tower and checkpoint.tensors[i.key].component == "vision_tower")
        )
    return issues, notes
