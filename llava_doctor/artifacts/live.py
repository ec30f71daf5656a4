"""The LiveModel artifact: a LLaVA-family model in memory, as the live checks see it.

``inspect_model(obj, ...)`` is the adapter: it takes what a training script holds - a
transformers-native ``Llava*ForConditionalGeneration`` (4.x and 5.x module trees), an original
LLaVA / LLaVA-NeXT ``Llava*ForCausalLM`` (``model.vision_tower`` wrapper with ``is_loaded``,
``model.mm_projector``), XTuner's ``LLaVAModel`` (``llm``, ``visual_encoder``, ``projector``), any
of them wrapped by PEFT, held by a DeepSpeed engine (``engine.module``), DDP or an HF ``Trainer``
(``trainer.model``) - and describes every parameter through the one component map of
``llava_doctor.layout`` (PEFT's wrapping removed by ``layout.live_key``). Wrappers are recognised
by their attributes: neither peft nor deepspeed is imported here.

What is recorded at construction is metadata only (names, true shapes, dtypes, devices,
``requires_grad``, ZeRO-3 partitioning, the config, the tower wrapper's state, the stage, the
optimizer's parameter groups). Values are read on demand, on the parameters' own devices
(``live_stats``), and cached on the artifact so that several checks share one pass. Nothing here
writes to the model.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from ..findings import InputError
from ..layout import LORA_PATTERN, canonical_key, component_of, config_kind, detect_layout, live_key
from ..stages import TrainingFlags, check_stage, infer_stage
from .live_stats import Moments, ValueStats, is_partitioned, moment_statistics, true_numel, true_shape, value_statistics

FAMILIES = ("hf-llava", "hf-llava-next", "hf-llava-onevision", "llava-original", "xtuner")
LLAVA_COMPONENTS = ("vision_tower", "projector", "language_model")
# config keys of LLaVA / LLaVA-NeXT train.py that say what a run trains (stages.TrainingFlags)
FLAG_KEYS = ("tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "lora_enable", "mm_tunable_parts")
_HF_FAMILIES = {"llava": "hf-llava", "llava_next": "hf-llava-next", "llava_next_video": "hf-llava-next",
                "llava_onevision": "hf-llava-onevision"}
_LAYER_INDEX = re.compile(r"(\.layers\.)\d+(\.)")


@dataclass(frozen=True)
class LiveParameter:
    name: str  # as the (unwrapped) model names it, PEFT levels included
    key: str  # the same in the layout of the model PEFT wrapped (layout.live_key)
    component: str
    shape: tuple[int, ...]  # the true shape (ds_shape under ZeRO-3)
    numel: int  # the true element count (ds_numel under ZeRO-3)
    dtype: str  # torch dtype name: float32, bfloat16, ...
    device: str  # where its data (its partition under ZeRO-3) lives
    requires_grad: bool
    partitioned: bool  # a ZeRO-3 partitioned parameter
    local_numel: int  # p.numel() as it is now (0 for a ZeRO-3 placeholder)
    zero_status: str | None  # ds_status (NOT_AVAILABLE, AVAILABLE, INFLIGHT) under ZeRO-3
    module_type: str  # class of the module that owns it (Linear, LayerNorm, Embedding, ...)

    @property
    def is_meta(self) -> bool:
        return self.device == "meta"


@dataclass(frozen=True)
class TowerState:
    present: bool  # vision tower weights exist in the module tree
    loaded: bool | None  # the wrapper's is_loaded (None where the family has no wrapper)
    delay_load: bool | None  # built with delay_load (config flag, or a wrapper holding only cfg_only)
    wrapper: str | None  # class of the wrapper (CLIPVisionTower, SigLipVisionTower, VisionTower)
    model_class: str | None  # class of the vision model (CLIPVisionModel, SiglipVisionModel)
    reference: str | None  # the base tower the config names (mm_vision_tower / vision_tower_name)


@dataclass(frozen=True)
class OptimizerGroups:
    kind: str  # class of the object holding the groups
    source: str  # where the groups were found (param_groups, fp16_groups, ...)
    groups: tuple[tuple[int, float | None], ...]  # (parameters, lr) per group
    members: frozenset[int]  # id() of every parameter in some group


@dataclass
class LiveModel:
    kind: ClassVar[str] = "LiveModel"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)
    name: str
    family: str  # one of FAMILIES
    model_class: str
    layout: str  # layout.LAYOUTS name of the (PEFT-unwrapped) parameter keys
    wrappers: tuple[str, ...]  # outermost first: Trainer, DeepSpeedEngine, DistributedDataParallel, PeftModel
    parameters: list[LiveParameter]
    config: dict[str, Any]
    config_kind: str | None
    tower: TowerState
    stage: str | None  # given, or inferred from the config's training flags; None when unknown
    stage_reason: str  # "given", or why it was inferred, or why it is unknown
    flags: TrainingFlags
    optimizer: OptimizerGroups | None = None
    zero_stage: int | None = None
    world_size: int = 1
    module: Any = field(default=None, repr=False)  # the unwrapped model
    handles: list[Any] = field(default_factory=list, repr=False)  # the torch parameters, aligned with `parameters`
    modules: dict[str, Any] = field(default_factory=dict, repr=False)  # component root modules: tower, projector
    notes: dict[str, Any] = field(default_factory=dict, repr=False)  # values computed once, shared by checks

    # --------------------------------------------------------------- structure
    def by_component(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for index, param in enumerate(self.parameters):
            groups.setdefault(param.component, []).append(index)
        return groups

    def components_present(self) -> set[str]:
        return {p.component for p in self.parameters}

    @property
    def lora_present(self) -> bool:
        return any(p.component == "lora" for p in self.parameters)

    @property
    def partitioned(self) -> bool:
        return any(p.partitioned for p in self.parameters)

    def canonical(self, index: int) -> str | None:
        return canonical_key(self.parameters[index].key, self.layout)

    # --------------------------------------------------------------- values (cached, collective under ZeRO-3)
    def values(self) -> list[ValueStats | str]:
        """ValueStats per parameter, or why its values were not read (meta, NVMe, integer dtype)."""
        if "values" not in self.notes:
            self.notes["values"] = value_statistics(self.handles)
        return self.notes["values"]

    def gradients(self) -> list[ValueStats | str]:
        """ValueStats of each parameter's gradient on this rank's data, or why there is none."""
        if "gradients" not in self.notes:
            self.notes["gradients"] = value_statistics(self.handles, gradients=True)
        return self.notes["gradients"]

    def moments(self, indices: Iterable[int]) -> dict[int, Moments | str]:
        cache: dict[int, Moments | str] = self.notes.setdefault("moments", {})
        wanted = [i for i in dict.fromkeys(indices) if i not in cache]
        if wanted:
            cache.update(zip(wanted, moment_statistics([self.handles[i] for i in wanted])))
        return cache

    # --------------------------------------------------------------- views for the shared pure functions
    def shape_view(self):
        """A Checkpoint of true shapes (no data): what the checkpoint shape rules (schema) read."""
        if "shape_view" not in self.notes:
            from .checkpoint import Checkpoint, TensorInfo

            tensors = {
                p.key: TensorInfo(name=p.key, shape=p.shape, dtype=_safetensors_dtype(p.dtype), file="", component=p.component)
                for p in self.parameters
            }
            self.notes["shape_view"] = Checkpoint(
                root="", name=self.name, format="live", layout=self.layout, tensors=tensors,
                config=self.config or None, config_kind=self.config_kind,
            )
        return self.notes["shape_view"]

    def linear_layers(self, component: str) -> list[tuple[int, int | None, int]]:
        """(weight index, bias index or None, fan_in) of every nn.Linear-like module in a component, in tree order."""
        index = {id(h): i for i, h in enumerate(self.handles)}
        found = []
        for _, module in self.module.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None or id(weight) not in index or type(module).__name__ != "Linear":
                continue
            w = index[id(weight)]
            if self.parameters[w].component != component or len(self.parameters[w].shape) != 2:
                continue
            bias = getattr(module, "bias", None)
            found.append((w, index.get(id(bias)) if bias is not None else None, self.parameters[w].shape[1]))
        return found


def _safetensors_dtype(name: str) -> str:
    return {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "float8_e4m3fn": "F8_E4M3",
            "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}.get(name, name)


# ----------------------------------------------------------------------------- unwrapping


def unwrap(obj: Any) -> tuple[Any, tuple[str, ...], Any]:
    """(the model, the wrappers peeled off outermost first, an optimizer a wrapper holds or None)."""
    wrappers: list[str] = []
    optimizer = None
    for _ in range(8):
        cls = type(obj).__name__
        if _is_trainer(obj):
            wrappers.append(cls)
            optimizer = optimizer or getattr(obj, "optimizer", None)
            obj = obj.model
        elif _is_deepspeed_engine(obj):
            wrappers.append(cls)
            optimizer = optimizer or getattr(obj, "optimizer", None)
            obj = obj.module
        elif cls in ("DistributedDataParallel", "DataParallel"):
            wrappers.append(cls)
            obj = obj.module
        elif cls == "FullyShardedDataParallel":
            raise InputError("FullyShardedDataParallel: its flattened parameters are not inspected; pass the model before wrapping")
        elif _is_peft(obj):
            wrappers.append(cls)
            obj = obj.get_base_model()
        else:
            break
    return obj, tuple(wrappers), optimizer


def _is_trainer(obj: Any) -> bool:
    return hasattr(obj, "model") and hasattr(obj, "args") and hasattr(obj, "create_optimizer") and not _is_module(obj)


def _is_deepspeed_engine(obj: Any) -> bool:
    return hasattr(obj, "module") and callable(getattr(obj, "zero_optimization_stage", None))


def _is_peft(obj: Any) -> bool:
    return hasattr(obj, "peft_config") and callable(getattr(obj, "get_base_model", None))


def _is_module(obj: Any) -> bool:
    return callable(getattr(obj, "named_parameters", None)) and callable(getattr(obj, "named_modules", None))


def _zero_stage(obj: Any) -> int | None:
    for _ in range(8):
        if _is_deepspeed_engine(obj):
            try:
                return int(obj.zero_optimization_stage())
            except Exception:
                return None
        inner = getattr(obj, "model_wrapped", None) if _is_trainer(obj) else None
        if inner is None or inner is obj:
            return None
        obj = inner
    return None


# ----------------------------------------------------------------------------- families


def _family(model: Any, layout: str) -> str | None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    inner = getattr(model, "model", None)
    if hasattr(model, "multi_modal_projector") or hasattr(inner, "multi_modal_projector"):
        return _HF_FAMILIES.get(str(model_type), "hf-llava")
    if all(hasattr(model, a) for a in ("llm", "visual_encoder", "projector")):
        return "xtuner"
    body = inner if inner is not None else model
    if hasattr(body, "mm_projector") or _tower_wrapper(body) is not None:
        return "llava-original"
    if config is not None and getattr(config, "mm_vision_tower", None) and layout.startswith("llava-original"):
        return "llava-original"
    return None


def _tower_wrapper(body: Any) -> Any:
    tower = getattr(body, "vision_tower", None)
    if isinstance(tower, (list, tuple)):  # LLaVA-NeXT keeps it in a list under FSDP
        tower = tower[0] if tower else None
    return tower if tower is not None and hasattr(tower, "is_loaded") else None


def _components_line(model: Any, keys: list[str], layout: str) -> str:
    counts: dict[str, int] = {}
    for key in keys:
        component = component_of(key, layout)
        counts[component] = counts.get(component, 0) + 1
    found = ", ".join(f"{c} ({n} tensors)" for c, n in sorted(counts.items()) if c != "other")
    missing = ", ".join(c for c in LLAVA_COMPONENTS if c not in counts)
    other = counts.get("other", 0)
    parts = [f"found {found}" if found else "found no LLaVA component"]
    if other:
        parts.append(f"{other} tensors outside any component (e.g. {next(k for k in keys if component_of(k, layout) == 'other')})")
    parts.append(f"not found: {missing or 'none'}")
    return "; ".join(parts)


def _tower_and_projector(model: Any, family: str, config_dict: dict[str, Any]) -> tuple[Any, Any, TowerState, dict]:
    """(vision model or None, projector module or None, tower state, config dict) for one family
    (`config_dict`: the model's own config as a dict; XTuner's is assembled from its parts)."""
    if family == "xtuner":
        tower = model.visual_encoder
        tower = tower.get_base_model() if _is_peft(tower) else tower
        llm = model.llm.get_base_model() if _is_peft(model.llm) else model.llm
        config_dict = _xtuner_config(model, llm, tower)
        state = TowerState(present=True, loaded=None, delay_load=None, wrapper=None,
                           model_class=type(tower).__name__, reference=getattr(tower.config, "_name_or_path", None) or None)
        return tower, model.projector, state, config_dict
    if family.startswith("hf-"):
        body = model.model if hasattr(getattr(model, "model", None), "multi_modal_projector") else model
        tower = getattr(body, "vision_tower", None)
        state = TowerState(present=tower is not None, loaded=None, delay_load=None, wrapper=None,
                           model_class=type(tower).__name__ if tower is not None else None, reference=None)
        return tower, getattr(body, "multi_modal_projector", None), state, config_dict
    body = model.get_model() if callable(getattr(model, "get_model", None)) else getattr(model, "model", model)
    wrapper = _tower_wrapper(body)
    loaded = bool(getattr(wrapper, "is_loaded", False)) if wrapper is not None else None
    tower = getattr(wrapper, "vision_tower", None) if wrapper is not None and loaded else None
    delay = config_dict.get("delay_load")
    if delay is None and wrapper is not None:
        delay = hasattr(wrapper, "cfg_only") and not loaded
    reference = getattr(wrapper, "vision_tower_name", None) or config_dict.get("mm_vision_tower")
    state = TowerState(present=tower is not None, loaded=loaded, delay_load=None if delay is None else bool(delay),
                       wrapper=type(wrapper).__name__ if wrapper is not None else None,
                       model_class=type(tower).__name__ if tower is not None else None,
                       reference=str(reference) if reference else None)
    return tower, getattr(body, "mm_projector", None), state, config_dict


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config), default=str))
    try:
        return json.loads(config.to_json_string(use_diff=False))
    except Exception:  # a config with values JSON cannot hold: keep what can be said
        return json.loads(json.dumps(config.to_dict(), default=str))


def _xtuner_config(model: Any, llm: Any, tower: Any) -> dict[str, Any]:
    """XTuner's LLaVAModel has no config of its own: the HF-llava shape of its parts, and its freeze flags
    in the words of LLaVA's train.py (frozen LLM without LoRA = the pretrain stage)."""
    use_lora = bool(getattr(model, "use_llm_lora", False)) or _is_peft(getattr(model, "llm", None))
    freeze_llm = bool(getattr(model, "freeze_llm", False))
    return {
        "model_type": "llava",
        "text_config": _config_dict(getattr(llm, "config", None)),
        "vision_config": _config_dict(getattr(tower, "config", None)),
        "vision_feature_layer": getattr(model, "visual_select_layer", -2),
        "tune_mm_mlp_adapter": freeze_llm and not use_lora,
        "unfreeze_mm_vision_tower": not bool(getattr(model, "freeze_visual_encoder", False)),
        "lora_enable": use_lora,
    }


def _stage(config: Mapping[str, Any], given: str | None, lora: bool) -> tuple[str | None, str, TrainingFlags]:
    flags = TrainingFlags.from_mapping(config, lora=True if lora else None)
    if given is not None:
        return check_stage(given), "given", flags
    if lora or any(key in config for key in FLAG_KEYS):
        stage, why = infer_stage(flags)
        return stage, f"inferred: {why}", flags
    return None, "not given, and the config carries none of LLaVA's training flags (tune_mm_mlp_adapter, mm_tunable_parts, ...)", flags


# ----------------------------------------------------------------------------- optimizer


def optimizer_groups(optimizer: Any) -> OptimizerGroups:
    """The parameter groups an optimizer really updates; InputError when `optimizer` is not one.

    DeepSpeed's ZeRO optimizers keep the model's own parameters in ``fp16_groups`` (stage 3) or
    ``bit16_groups`` (stages 1/2) - their ``param_groups`` hold flat fp32 partitions instead;
    wrappers such as accelerate's ``AcceleratedOptimizer`` hold the real one in ``.optimizer``.
    """
    level, plain = optimizer, None
    for _ in range(6):
        for attr in ("fp16_groups", "bit16_groups", "bf16_groups"):
            groups = getattr(level, attr, None)
            if isinstance(groups, list) and groups and all(isinstance(g, (list, tuple)) for g in groups):
                lrs = [g.get("lr") for g in getattr(level, "param_groups", None) or [] if isinstance(g, Mapping)]
                return _groups(level, attr, [list(g) for g in groups], lrs)
        groups = getattr(level, "param_groups", None)
        if plain is None and isinstance(groups, list) and all(isinstance(g, Mapping) and "params" in g for g in groups):
            plain = _groups(level, "param_groups", [list(g["params"]) for g in groups], [g.get("lr") for g in groups])
        inner = getattr(level, "optimizer", None)
        if inner is None or inner is level:
            break
        level = inner
    if plain is None:
        raise InputError(f"optimizer: a {type(optimizer).__name__} is not an optimizer (no param_groups holding parameters)")
    return plain


def _groups(holder: Any, source: str, groups: list[list[Any]], lrs: list[Any]) -> OptimizerGroups:
    rows = tuple((len(g), float(lrs[i]) if i < len(lrs) and isinstance(lrs[i], (int, float)) else None)
                 for i, g in enumerate(groups))
    return OptimizerGroups(kind=type(holder).__name__, source=source, groups=rows,
                           members=frozenset(id(p) for g in groups for p in g))


# ----------------------------------------------------------------------------- the adapter


def inspect_model(obj: Any, *, stage: str | None = None, optimizer: Any = None, name: str | None = None) -> LiveModel:
    """Describe a live LLaVA-family model (see the module docstring); InputError for anything else."""
    if obj is None:
        raise InputError("model: got None, expected a LLaVA-family nn.Module (or a Trainer / DeepSpeed engine holding one)")
    model, wrappers, held_optimizer = unwrap(obj)
    if not _is_module(model):
        raise InputError(f"model: a {type(model).__name__} is not a torch module")
    named = list(model.named_parameters())
    cls = type(model).__name__
    if not named:
        raise InputError(f"model: {cls} has no parameters (an empty model): nothing to inspect")
    keys = [live_key(n) for n, _ in named]
    config_dict = _config_dict(getattr(model, "config", None))
    layout = detect_layout(keys, config_dict)
    family = _family(model, layout)
    if family is None:
        raise InputError(f"model: {cls} is not a LLaVA-family model: {_components_line(model, keys, layout)}")
    tower, projector, tower_state, config = _tower_and_projector(model, family, config_dict)
    owners = _owners(model)
    parameters: list[LiveParameter] = []
    for (param_name, param), key in zip(named, keys):
        data = getattr(param, "ds_tensor", None) if is_partitioned(param) else param
        parameters.append(LiveParameter(
            name=param_name, key=key, component=component_of(key, layout), shape=true_shape(param), numel=true_numel(param),
            dtype=str(param.dtype).replace("torch.", ""), device=str(data.device) if data is not None else "unknown",
            requires_grad=bool(param.requires_grad), partitioned=is_partitioned(param), local_numel=int(param.numel()),
            zero_status=str(param.ds_status).rsplit(".", 1)[-1] if hasattr(param, "ds_status") else None,
            module_type=owners.get(param_name, ""),
        ))
    lora = any(LORA_PATTERN.search(k) for k in keys)
    stage_value, stage_reason, flags = _stage(config, stage, lora)
    groups = optimizer_groups(optimizer if optimizer is not None else held_optimizer) \
        if (optimizer is not None or held_optimizer is not None) else None
    live = LiveModel(
        name=name or f"<{' > '.join((*wrappers, cls))}>", family=family, model_class=cls, layout=layout, wrappers=wrappers,
        parameters=parameters, config=config, config_kind=config_kind(config) if family != "xtuner" else "hf-llava",
        tower=tower_state, stage=stage_value, stage_reason=stage_reason, flags=flags, optimizer=groups,
        zero_stage=_zero_stage(obj), world_size=_world_size(), module=model, handles=[p for _, p in named],
        modules={k: v for k, v in (("tower", tower), ("projector", projector)) if v is not None},
    )
    if live.zero_stage is None and live.partitioned:
        live.zero_stage = 3
    return live


def _owners(model: Any) -> dict[str, str]:
    owners: dict[str, str] = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owners.setdefault(f"{module_name}.{param_name}" if module_name else param_name, type(module).__name__)
    return owners


def _world_size() -> int:
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return int(torch.distributed.get_world_size())


def missing_keys(live: LiveModel, load_report: Mapping[str, Any] | None, component: str) -> list[str]:
    """Keys of `component` a loader reported missing (from_pretrained's "newly initialized" keys)."""
    keys = (load_report or {}).get("missing_keys") or []
    return [k for k in keys if isinstance(k, str) and component_of(live_key(k), live.layout) == component]


def load_evidence(live: LiveModel, load_report: Mapping[str, Any] | None, component: str) -> str:
    """"; the load reported N <component> keys missing (newly initialised)", or "" without a load report."""
    missing = missing_keys(live, load_report, component)
    if not missing:
        return ""
    delay = "" if live.tower.delay_load is None or component != "vision_tower" else f", delay_load {str(live.tower.delay_load).lower()}"
    return f"; the load reported {len(missing)} {component} keys missing, newly initialised (e.g. {missing[0]}{delay})"


def representative(name: str) -> str:
    """`encoder.layers.7.mlp.fc1.weight` -> `encoder.layers.0.mlp.fc1.weight`: layers share an initializer."""
    return _LAYER_INDEX.sub(r"\g<1>0\2", name)


# ----------------------------------------------------------------------------- the per-component table


def component_table(live: LiveModel) -> list[dict[str, Any]]:
    """Per component: trainable / total parameters (true counts), tensors, dtypes and devices - the view of
    PEFT's print_trainable_parameters and LLaVA-NeXT's "Trainable parameter groups" log."""
    rows: dict[str, dict[str, Any]] = {}
    for param in live.parameters:
        row = rows.setdefault(param.component, {"component": param.component, "trainable": 0, "total": 0, "tensors": 0,
                                                "trainable_tensors": 0, "dtypes": set(), "devices": set(), "partitioned": 0})
        row["total"] += param.numel
        row["tensors"] += 1
        row["dtypes"].add(param.dtype)
        row["devices"].add(param.device)
        row["partitioned"] += int(param.partitioned)
        if param.requires_grad:
            row["trainable"] += param.numel
            row["trainable_tensors"] += 1
    order = {c: i for i, c in enumerate(("vision_tower", "projector", "image_newline", "language_model", "lm_head", "lora", "other"))}
    out = []
    for row in sorted(rows.values(), key=lambda r: order.get(r["component"], 99)):
        row["dtypes"], row["devices"] = sorted(row["dtypes"]), sorted(row["devices"])
        out.append(row)
    return out


def format_component_table(table: list[dict[str, Any]]) -> list[str]:
    """The table as text lines (for a reporter that prints `report.stats["live"]`)."""
    lines = [f"{'component':<15} {'trainable':>15} {'total':>15} {'%':>6}  dtype / device"]
    for row in table:
        share = 100.0 * row["trainable"] / row["total"] if row["total"] else 0.0
        where = f"{','.join(row['dtypes'])} / {','.join(row['devices'])}"
        if row["partitioned"]:
            where += f" (ZeRO-3: {row['partitioned']} of {row['tensors']} partitioned)"
        lines.append(f"{row['component']:<15} {row['trainable']:>15,} {row['total']:>15,} {share:>5.1f}%  {where}")
    return lines
