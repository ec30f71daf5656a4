"""A launch's DeepSpeed config, as the HF integration fills it and as DeepSpeed's own config model reads it.

``TrainingArguments(deepspeed=...)`` loads the JSON into ``HfTrainerDeepSpeedConfig``, which replaces
``"auto"`` on a fixed set of keys with TrainingArguments values (and raises ``Please correct the
following DeepSpeed config values that mismatch TrainingArguments values`` when an explicit value
disagrees); ``deepspeed.initialize`` then builds ``DeepSpeedConfig`` (pydantic models with
``extra="forbid"``). The set of keys the installed transformers fills is read from its
``integrations/deepspeed.py`` source (``fill_match`` / ``fill_only`` calls), not imported. The
validation imports ``deepspeed.runtime.config`` lazily - no distributed init, no op build - and is
skipped, with a note, where DeepSpeed is not installed.
"""
from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import os
from typing import Any, Iterator, Mapping

# the keys HfTrainerDeepSpeedConfig fills, for a transformers whose source cannot be read
FALLBACK_AUTO_KEYS = frozenset({
    "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping",
    "optimizer.params.lr", "optimizer.params.betas", "optimizer.params.eps", "optimizer.params.weight_decay",
    "scheduler.params.warmup_min_lr", "scheduler.params.warmup_max_lr", "scheduler.params.total_num_steps",
    "scheduler.params.warmup_num_steps", "fp16.enabled", "bf16.enabled", "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_param_persistence_threshold",
})
# ds key -> (TrainingArguments value(s), shown as) for HF's must-match comparison
_MATCHED = {
    "train_micro_batch_size_per_gpu": (("per_device_train_batch_size",), "per_device_train_batch_size"),
    "gradient_accumulation_steps": (("gradient_accumulation_steps",), "gradient_accumulation_steps"),
    "gradient_clipping": (("max_grad_norm",), "max_grad_norm"),
    "optimizer.params.lr": (("learning_rate",), "learning_rate"),
    "optimizer.params.betas": (("adam_beta1", "adam_beta2"), "adam_beta1+adam_beta2"),
    "optimizer.params.eps": (("adam_epsilon",), "adam_epsilon"),
    "optimizer.params.weight_decay": (("weight_decay",), "weight_decay"),
    "scheduler.params.warmup_max_lr": (("learning_rate",), "learning_rate"),
    "fp16.enabled": (("fp16", "fp16_full_eval"), "fp16|fp16_full_eval"),
    "bf16.enabled": (("bf16", "bf16_full_eval"), "bf16|bf16_full_eval"),
}
GATHER_KEYS = ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save")


@functools.lru_cache(maxsize=2)
def hf_auto_keys(directory: str | None = None) -> frozenset[str]:
    """The dotted DeepSpeed keys whose "auto" the installed transformers replaces."""
    from ..files import read_text

    if directory is None:
        spec = importlib.util.find_spec("transformers")
        if spec is None or not spec.submodule_search_locations:
            return FALLBACK_AUTO_KEYS
        directory = list(spec.submodule_search_locations)[0]
    try:
        tree = ast.parse(read_text(os.path.join(directory, "integrations", "deepspeed.py"), limit=1 << 20))
    except Exception:
        return FALLBACK_AUTO_KEYS
    keys = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("fill_match", "fill_only") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            keys.add(node.args[0].value)
    return frozenset(keys) or FALLBACK_AUTO_KEYS


def get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def put(config: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _pop(config: dict, dotted: str) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        node = node[part]
    node.pop(parts[-1], None)


def auto_keys(config: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from auto_keys(value, dotted + ".")
        elif value == "auto":
            yield dotted


def zero_stage(config: Mapping[str, Any]) -> int:
    stage = get(config, "zero_optimization.stage", 0)
    try:
        return int(stage)
    except (TypeError, ValueError):
        return 0


def gather_on_save(config: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(flag value, the key spelling used) of ZeRO-3's 16-bit gather on save (DeepSpeed's default: False)."""
    zero = config.get("zero_optimization") or {}
    for key in GATHER_KEYS:
        if isinstance(zero, Mapping) and key in zero:
            return bool(zero[key]), key
    return False, None


def offload_device(config: Mapping[str, Any], what: str) -> str | None:
    device = get(config, f"zero_optimization.offload_{what}.device")
    return None if device in (None, "none") else str(device)


def hf_value(arguments: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    if len(names) == 2 and names[0].startswith("adam_beta"):
        return [arguments.get(names[0]), arguments.get(names[1])]
    if len(names) == 2:
        return bool(arguments.get(names[0])) or bool(arguments.get(names[1]))
    return arguments.get(names[0])


def fill_auto(config: Mapping[str, Any], arguments: Mapping[str, Any], hidden_size: int | None,
              keys: frozenset[str]) -> tuple[dict, list[str], list[str]]:
    """(config as the HF integration hands it to DeepSpeed, its mismatch lines, "auto" keys it leaves).

    World size is unknown before launch: train_batch_size is filled for one process and never compared.
    """
    filled = copy.deepcopy(dict(config))
    mismatches: list[str] = []
    hidden = hidden_size or 4096
    placeholders = {
        "train_batch_size": (arguments.get("per_device_train_batch_size") or 1) * (arguments.get("gradient_accumulation_steps") or 1),
        "scheduler.params.warmup_min_lr": 0, "scheduler.params.total_num_steps": 1000,
        "scheduler.params.warmup_num_steps": 10, "zero_optimization.reduce_bucket_size": hidden * hidden,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden,
    }
    for dotted, (names, shown) in _MATCHED.items():
        value = hf_value(arguments, names)
        current = get(filled, dotted)
        if current == "auto" and dotted in keys:
            put(filled, dotted, value)
        elif current is not None and current != "auto" and value is not None and current != value:
            if not (isinstance(current, (int, float)) and isinstance(value, (int, float)) and float(current) == float(value)):
                mismatches.append(f"ds {dotted}={current} vs hf {shown}={value}")
    for dotted, value in placeholders.items():
        if get(filled, dotted) == "auto" and dotted in keys:
            put(filled, dotted, value)
    left = list(auto_keys(filled))
    for dotted in left:
        _pop(filled, dotted)  # DeepSpeed's default applies where the integration leaves a key unfilled
    return filled, mismatches, left


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def validate(config: Mapping[str, Any]) -> str | None:
    """DeepSpeed's own verdict on a filled config: None when it accepts it, else its error as one line.

    DeepSpeed's logger writes to the stdout of the moment it is created (on import): both the import
    and the validation run with stdout captured, and the logger is pointed back at the real stdout
    afterwards, so that nothing it says lands in a machine-readable report.
    """
    import contextlib
    import io
    import logging
    import sys

    real_stdout, buffer = sys.stdout, io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            from deepspeed.runtime.config import DeepSpeedConfig  # lazy: imports torch; no dist init, no op build

            try:
                DeepSpeedConfig(copy.deepcopy(dict(config)))
            except Exception as exc:  # pydantic ValidationError, AssertionError, TypeError: DeepSpeed saying no
                lines = [line.strip() for line in str(exc).splitlines()
                         if line.strip() and "errors.pydantic.dev" not in line]
                return f"{type(exc).__name__}: {' | '.join(lines) or 'rejected'}"[:600]
        return None
    finally:
        for handler in logging.getLogger("DeepSpeed").handlers:
            if getattr(handler, "stream", None) is buffer:
                handler.setStream(real_stdout)
