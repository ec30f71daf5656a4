"""Generation: one greedy answer of a checkpoint to a prompt about an image, with what went non-finite.

`Generation` is a plain record (no torch); `run_generation` is the adapter that loads a checkpoint of
the bundled core's architectures, hooks every module, decodes greedily and fills the record. A step
is one generated token (1-based); the first step's forward also encodes the image.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

from ..findings import InputError

SUPPORTED_MODEL_TYPES = ("llava_llama", "llava_qwen")
DTYPES = ("float16", "bfloat16", "float32")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Generation:
    kind: ClassVar[str] = "Generation"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)
    name: str  # the checkpoint it came from
    prompt: str
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]  # generated ids only
    text: str  # decoded generated ids, special tokens skipped
    step_logits_finite: tuple[bool, ...]  # one per generated token
    dtype: str  # the model's dtype while generating
    token_zero: str  # what the tokenizer decodes id 0 to ('!' in Qwen2, '<unk>' in the bundled one)
    first_nonfinite_module: str | None = None  # first module, in forward order, with a non-finite output
    first_nonfinite_step: int | None = None
    first_nonfinite_value: str | None = None  # "inf" or "nan": what that output held

    @property
    def nonfinite_steps(self) -> tuple[int, ...]:
        return tuple(step for step, finite in enumerate(self.step_logits_finite, start=1) if not finite)


def read_config(ckpt_dir: Path) -> dict[str, Any]:
    config_path = ckpt_dir / "config.json"
    if not ckpt_dir.is_dir():
        raise InputError(f"{ckpt_dir}: not a checkpoint directory")
    if not config_path.is_file():
        raise InputError(f"{ckpt_dir}: no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{config_path}: unreadable config ({error})") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: not a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            "generate supports checkpoints of the bundled core's architectures "
            f"({', '.join(SUPPORTED_MODEL_TYPES)}); got model_type {model_type!r} in {config_path}"
        )
    return config


def config_dtype(config: dict[str, Any]) -> str:
    """The dtype the config asks for (transformers 5 `dtype`, 4.x `torch_dtype`); float32 when absent."""
    value = config.get("dtype") or config.get("torch_dtype") or "float32"
    value = str(value).replace("torch.", "")
    if value not in DTYPES:
        raise InputError(f"config dtype {value!r} is not one of {', '.join(DTYPES)}; pass --dtype")
    return value


def float_tensors(output: Any) -> Iterator[Any]:
    """The floating-point tensors of a module output (a tensor, a tuple/list, or a ModelOutput/dict)."""
    import torch

    if isinstance(output, torch.Tensor):
        if output.is_floating_point():
            yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from float_tensors(item)
    elif isinstance(output, dict):  # transformers' ModelOutput is an OrderedDict
        for item in output.values():
            yield from float_tensors(item)


class NonFiniteWatch:
    """Forward hooks on every module: counts steps (root forwards), records each step's last-position
    logits finiteness and the first module whose output holds inf/NaN."""

    def __init__(self, model) -> None:
        self.step = 0
        self.logits_finite: list[bool] = []
        self.module: str | None = None
        self.module_step: int | None = None
        self.value: str | None = None
        self._handles = [model.register_forward_pre_hook(self._next_step),
                         model.register_forward_hook(self._logits)]
        for name, module in model.named_modules():
            if name:
                self._handles.append(module.register_forward_hook(self._watch(name)))

    def _next_step(self, _module, _inputs) -> None:
        self.step += 1

    def _logits(self, _module, _inputs, output) -> None:
        import torch

        self.logits_finite.append(bool(torch.isfinite(output.logits[0, -1]).all()))

    def _watch(self, name: str):
        import torch

        def hook(_module, _inputs, output) -> None:
            if self.module is not None:
                return
            for tensor in float_tensors(output):
                if not bool(torch.isfinite(tensor).all()):
                    self.module, self.module_step = name, self.step
                    self.value = "inf" if bool(torch.isinf(tensor).any()) else "nan"
                    return

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _load_image(image_path: Path):
    from ..core.images import read_png

    try:
        return read_png(image_path)
    except OSError as error:
        raise InputError(f"{image_path}: cannot read image ({error.strerror or error})") from None
    except ValueError as error:
        raise InputError(str(error)) from None


def _load_tokenizer(ckpt_dir: Path):
    from ..core.tokenizer import load_tokenizer

    own = any((ckpt_dir / name).is_file() for name in TOKENIZER_FILES)
    try:
        return load_tokenizer(ckpt_dir if own else None)
    except (OSError, ValueError) as error:
        raise InputError(f"{ckpt_dir}: cannot load its tokenizer ({' '.join(str(error).split())})") from None


def _load_model(ckpt_dir: Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    from ..core import model as _core  # noqa: F401  registers llava_llama / llava_qwen with the Auto classes

    if not any((ckpt_dir / name).is_file() for name in SAFETENSORS_WEIGHTS):
        raise InputError(f"{ckpt_dir}: generate reads safetensors weights only (no {' or '.join(SAFETENSORS_WEIGHTS)})")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir), dtype=getattr(torch, dtype),
                                                     local_files_only=True, use_safetensors=True)
        tower = model.get_vision_tower()
        if tower is None:
            raise InputError(f"{ckpt_dir}: the config names no vision tower (mm_vision_tower)")
        if not tower.is_loaded:  # delay_load: the builder loads the tower from mm_vision_tower afterwards
            tower.load_model()
            tower.to(getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{ckpt_dir}: cannot load the model ({' '.join(str(error).split())})") from None
    return model.eval()


def _check_image_size(image, model) -> None:
    expected = getattr(model.get_vision_tower().config, "image_size", None)
    height, width = image.shape[:2]
    if expected and (height, width) != (expected, expected):
        raise InputError(f"image is {width}x{height}; the vision tower expects {expected}x{expected}")


def run_generation(ckpt_dir: str | Path, image_path: str | Path, *, prompt: str, max_new_tokens: int = 16,
                   dtype: str | None = None) -> Generation:
    """Load a core-compatible checkpoint (in its config's dtype unless `dtype`), answer `prompt` about the
    PNG at `image_path` greedily, and record per-step logits finiteness and the first non-finite module."""
    ckpt_dir, image_path = Path(ckpt_dir), Path(image_path)
    config = read_config(ckpt_dir)
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    dtype = dtype or config_dtype(config)
    image = _load_image(image_path)
    tokenizer = _load_tokenizer(ckpt_dir)
    model = _load_model(ckpt_dir, dtype)
    _check_image_size(image, model)
    if len(tokenizer) > model.config.vocab_size:
        raise InputError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}")

    from ..core.model import generate_greedy

    watch = NonFiniteWatch(model)
    try:
        result = generate_greedy(model, tokenizer, image, prompt, max_new_tokens=max_new_tokens)
    finally:
        watch.remove()
    return Generation(
        name=str(ckpt_dir),
        prompt=prompt,
        prompt_ids=tuple(result.prompt_ids),
        token_ids=tuple(result.token_ids),
        text=result.text,
        step_logits_finite=tuple(watch.logits_finite),
        dtype=dtype,
        token_zero=tokenizer.decode([0]),
        first_nonfinite_module=watch.module,
        first_nonfinite_step=watch.module_step,
        first_nonfinite_value=watch.value,
    )
