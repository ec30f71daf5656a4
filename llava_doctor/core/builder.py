"""Load a checkpoint folder the way its own inference code would (``llava-doctor inspect`` and ``generate``).

A client of the engine (like a user's inference script): it may import transformers and the core;
the engine never imports it. The contract is ``/plan/builder_contract.md``:

- transformers-native ``Llava*ForConditionalGeneration`` folders: ``from_pretrained`` (local files
  only), the processor and its chat template from the folder; transformers 4.37 and 5.x.
- original LLaVA / LLaVA-NeXT folders (``mm_vision_tower``; ``LlavaLlamaForCausalLM`` /
  ``LlavaQwenForCausalLM``): the core's compatible classes, with LLaVA-NeXT's ``load_pretrained_model``
  sequence - the tower delay-loaded or not as the codebase that wrote the config does it
  (``tower_loading``: haotian-liu/LLaVA always delay-loads a frozen tower; LLaVA-NeXT reads
  ``delay_load``, default false, true for "v1.5" model names), ``from_pretrained``
  with ``low_cpu_mem_usage``, a projector-only folder (``mm_projector.bin``) put on ``model_base``'s
  LLM, ``<im_patch>`` added when ``mm_use_im_patch_token`` is not false, and
  ``if not vision_tower.is_loaded: vision_tower.load_model()``. ``mm_vision_tower`` must resolve to a
  local folder: a path, or a hub id already in the local Hugging Face cache (``HF_HUB_CACHE`` /
  ``HF_HOME``); nothing is downloaded.

Unreadable or unsupported input raises ``InputError`` (one line). Nothing is written into the folder.
Library progress bars and LOAD REPORT noise are silenced; what they would have said (missing,
unexpected, mismatched keys) is in ``LoadedModel.load_report``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..quiet import quiet_libraries
from ..files import read_json
from ..findings import InputError, one_line
from ..layout import config_kind
from ..tower_loading import loader_model_name

HF_CLASSES = {"hf-llava": "LlavaForConditionalGeneration", "hf-llava-next": "LlavaNextForConditionalGeneration",
              "hf-llava-onevision": "LlavaOnevisionForConditionalGeneration"}
ORIGINAL_ARCHITECTURES = {"LlavaLlamaForCausalLM": "llama", "LlavaQwenForCausalLM": "qwen2", "LlavaQwen2ForCausalLM": "qwen2"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PROJECTOR_FILE = "mm_projector.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
DTYPES = ("float16", "bfloat16", "float32")
CORE_CONV_MODE = "core"  # the bundled core's own prompt format (core.data.prompt_ids)
IMAGE_PATCH_TOKEN, IM_START_TOKEN, IM_END_TOKEN = "<im_patch>", "<im_start>", "<im_end>"


@dataclass
class LoadedModel:
    model: Any  # eval mode, on `device`, in `dtype`
    tokenizer: Any | None  # the folder's tokenizer (None only when require_tokenizer=False and none exists)
    processor: Any | None  # HF processor (native families) or the image processor the codebase uses
    family: str  # "hf-llava" | "hf-llava-next" | "hf-llava-onevision" | "llava-original"
    config: dict  # config.json as read
    load_report: dict  # missing/unexpected/mismatched keys, delay_load, the tower's loading, notes
    conv_mode: str | None = None  # original LLaVA: the conversation template prompts are built with
    name: str = ""  # the folder as given
    device: str = "cpu"
    dtype: str = "float32"

    def inputs_builder(self) -> Callable:
        """``build(images, prompt) -> ModelInputs``: the prompt and images the way this family's inference
        script builds them (for ``artifacts.generation.run_generation``)."""
        from ..artifacts import model_inputs

        if self.tokenizer is None:
            raise InputError(f"{self.name}: no tokenizer was loaded; pass one to build prompts")
        if self.family.startswith("hf-"):
            return model_inputs.chat_template_inputs(self.processor, device=self.device, dtype=self.model.dtype)
        if self.conv_mode == CORE_CONV_MODE:
            return core_inputs(self.tokenizer, self.processor, device=self.device, dtype=self.model.dtype)
        return model_inputs.conversation_inputs(
            self.tokenizer, self.processor, conv_mode=self.conv_mode or "llava_v0",
            image_token_index=int(getattr(self.model.config, "image_token_index", model_inputs.LLAVA_IMAGE_TOKEN_INDEX)),
            image_aspect_ratio=self.config.get("image_aspect_ratio"), device=self.device, dtype=self.model.dtype,
            im_start_end=bool(self.config.get("mm_use_im_start_end")))


def core_inputs(tokenizer: Any, image_processor: Any, *, device: Any, dtype: Any) -> Callable:
    """The bundled core's own prompt (``core.data.prompt_ids``: its system prompt, one segment after BOS)."""
    import torch

    from ..artifacts.model_inputs import ModelInputs, place
    from .data import prompt_ids

    def build(images, prompt: str):
        ids = prompt_ids(tokenizer, prompt, with_image=True)
        input_ids = torch.tensor([ids] * len(images))
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                  "images": image_processor(list(images), return_tensors="pt")["pixel_values"]}
        return ModelInputs(kwargs=place(kwargs, device, dtype), prompt=tokenizer.decode(ids), prompt_ids=ids)

    return build


# ----------------------------------------------------------------------------- helpers


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def dtype_keyword(dtype: Any) -> dict[str, Any]:
    """``dtype=`` for transformers 5, ``torch_dtype=`` for 4.x."""
    return {"dtype": dtype} if transformers_major() >= 5 else {"torch_dtype": dtype}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: torch sees no CUDA device here; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device {device!r}: expected cpu, cuda, cuda:N or auto")
    return device


def resolve_dtype(dtype: str | None, config: dict) -> str:
    value = dtype or config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype") \
        or (config.get("text_config") or {}).get("torch_dtype") or "float32"
    value = str(value).replace("torch.", "")
    if value not in DTYPES:
        raise InputError(f"dtype {value!r} is not one of {', '.join(DTYPES)}; pass --dtype")
    return value


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_libraries():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # tokenizers raise ValueError, OSError, Exception from Rust
        raise InputError(f"{folder}: cannot load its tokenizer ({one_line(error, 240)})") from None


def hub_cache_dir() -> str:
    """The local Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def resolve_vision_tower(reference: Any, root: Path) -> str:
    """The local folder `mm_vision_tower` names: a path (absolute, or relative to the working directory or
    the checkpoint), or a hub id found in the local cache. InputError naming it otherwise."""
    from ..schema import resolve_local_tower

    if not isinstance(reference, str) or not reference:
        raise InputError(f"{root}/config.json: mm_vision_tower is missing; the original-LLaVA builder cannot build the tower")
    local = resolve_local_tower(reference, str(root))
    if local is not None:
        return local
    cache = hub_cache_dir()
    if reference.count("/") == 1 and not reference.startswith(("/", ".")):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(reference, "config.json", cache_dir=cache)
        except Exception:
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return os.path.dirname(found)
    raise InputError(f"mm_vision_tower {reference!r} (in {root}/config.json) is neither a local folder nor a model in "
                     f"the local Hugging Face cache {cache}; download it there or point mm_vision_tower at a local copy")


def is_bundled_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds the bundled core's tokenizer (its checkpoints use the core's prompt format)."""
    from .tokenizer import portable_tokenizer_json, tokenizer_dir

    mine, bundled = folder / "tokenizer.json", tokenizer_dir() / "tokenizer.json"
    try:
        if not mine.is_file() or mine.stat().st_size > 4 * bundled.stat().st_size:
            return False
        # the same tokenizer: `save_pretrained` under another tokenizers release lays the JSON out differently
        return mine.read_bytes() == bundled.read_bytes() or \
            portable_tokenizer_json(read_json(mine)) == portable_tokenizer_json(read_json(bundled))
    except (OSError, InputError):
        return False


# ----------------------------------------------------------------------------- the loader


def load_pretrained_model(path: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None,
                          delay_load: bool | None = None, require_tokenizer: bool = True, conv_mode: str | None = None,
                          model_base: str | os.PathLike | None = None,
                          tokenizer: str | os.PathLike | None = None) -> LoadedModel:
    """Load the checkpoint folder `path` (see the module docstring).

    `model_base` is the language model a projector-only folder (``mm_projector.bin``) goes on, as
    LLaVA's ``--model-base``; `tokenizer` a folder to take the tokenizer from when `path` has none.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a checkpoint directory")
    if not (folder / "config.json").exists():
        raise InputError(f"{folder}: no config.json")
    config = read_json(folder / "config.json", what="config.json")
    family = config_kind(config)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, config)
    if family in HF_CLASSES:
        loaded = _load_hf(folder, config, family, device=device, dtype=dtype, require_tokenizer=require_tokenizer,
                          tokenizer=tokenizer)
    elif family == "llava-original":
        loaded = _load_original(folder, config, device=device, dtype=dtype, delay_load=delay_load,
                                require_tokenizer=require_tokenizer, conv_mode=conv_mode,
                                model_base=Path(model_base) if model_base is not None else None, tokenizer=tokenizer)
    else:
        raise InputError(f"{folder}/config.json: model_type {config.get('model_type')!r} is not a LLaVA-family model "
                         "(transformers Llava / LlavaNext / LlavaOnevision, or original LLaVA / LLaVA-NeXT with mm_vision_tower)")
    loaded.model.eval()
    return loaded


def _tokenizer_folder(folder: Path, given: str | os.PathLike | None, base: Path | None, require: bool) -> Path | None:
    """Where the tokenizer comes from: `given`, else the checkpoint, else the base LLM (LLaVA's builder
    takes it from model_base for projector-only folders)."""
    if given is not None:
        given = Path(given)
        if not has_tokenizer(given):
            raise InputError(f"--tokenizer {given}: no tokenizer files there ({', '.join(TOKENIZER_FILES)})")
        return given
    for candidate in (folder, base):
        if candidate is not None and has_tokenizer(candidate):
            return candidate
    if require:
        raise InputError(f"{folder}: no tokenizer ({', '.join(TOKENIZER_FILES)}); pass --tokenizer DIR naming the "
                         "tokenizer the model was trained with")
    return None


def _load_hf(folder: Path, config: dict, family: str, *, device: str, dtype: str, require_tokenizer: bool,
             tokenizer: str | os.PathLike | None) -> LoadedModel:
    import torch
    import transformers

    class_name = HF_CLASSES[family]
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise InputError(f"{folder}: transformers {transformers.__version__} has no {class_name}; upgrade transformers to load it")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise InputError(f"{folder}: no weights ({', '.join(WEIGHT_FILES)})")
    source = _tokenizer_folder(folder, tokenizer, None, require_tokenizer)
    notes: list[str] = []
    try:
        with quiet_libraries():
            model, info = model_class.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                      **dtype_keyword(getattr(torch, dtype)))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise InputError(f"{folder}: cannot load {class_name} ({one_line(error, 240)})") from None
    processor = None
    tok = None
    if source is not None:
        processor = _hf_processor(folder, source)
        tok = getattr(processor, "tokenizer", None)
        if source != folder:
            notes.append(f"tokenizer from {source}")
    model.to(device)
    report = _load_report(info, notes=notes)
    return LoadedModel(model=model, tokenizer=tok, processor=processor, family=family, config=config,
                       load_report=report, name=str(folder), device=device, dtype=dtype)


def _hf_processor(folder: Path, source: Path) -> Any:
    """The folder's processor; with the tokenizer of `source` when that is another folder (read through a
    temporary folder of links: the checkpoint's files, the tokenizer's files over them; nothing is written
    into either)."""
    import shutil
    import tempfile

    from transformers import AutoProcessor

    overlay = None
    try:
        if source != folder:
            overlay = Path(tempfile.mkdtemp(prefix="llava-doctor-processor-"))
            for origin in (folder, source):
                for item in origin.iterdir():
                    if item.is_file() and (origin == source or not _is_tokenizer_file(item.name)):
                        target = overlay / item.name
                        target.unlink(missing_ok=True)
                        target.symlink_to(item.resolve())
        with quiet_libraries():
            return AutoProcessor.from_pretrained(str(overlay or folder), local_files_only=True)
    except Exception as error:  # a missing preprocessor_config.json is an OSError, a bad one a ValueError
        raise InputError(f"{folder}: cannot load its processor ({one_line(error, 240)})") from None
    finally:
        if overlay is not None:
            shutil.rmtree(overlay, ignore_errors=True)


def _is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or name.startswith(("tokenizer", "special_tokens_map", "added_tokens")) or name == "merges.txt"


def _load_report(info: dict | None, *, notes: list[str], **extra: Any) -> dict:
    info = info or {}

    def names(values: Any) -> list[Any]:
        return sorted(str(v[0]) if isinstance(v, (tuple, list)) else str(v) for v in values or [])

    return {"missing_keys": names(info.get("missing_keys")), "unexpected_keys": names(info.get("unexpected_keys")),
            "mismatched_keys": names(info.get("mismatched_keys")), "delay_load": extra.get("delay_load"),
            "tower_loaded_by_from_pretrained": extra.get("tower_loaded_by_from_pretrained"),
            "tower_loaded_after": extra.get("tower_loaded_after"), "notes": list(notes)}


def _original_weights(folder: Path, base: Path | None) -> tuple[Path, Path | None]:
    """(folder from_pretrained reads, projector file to apply after it)."""
    full = any((folder / name).is_file() for name in WEIGHT_FILES)
    projector = folder / PROJECTOR_FILE
    if full:
        return folder, None
    if (folder / "adapter_config.json").is_file():
        raise InputError(f"{folder}: a LoRA checkpoint; merge it into its base first (LLaVA's scripts/merge_lora_weights.py)")
    if projector.is_file():
        if base is None:
            raise InputError(f"{folder}: only {PROJECTOR_FILE} (a pretrain-stage projector); pass --model-base DIR naming "
                             "the language model it was trained on")
        if not base.is_dir() or not any((base / name).is_file() for name in WEIGHT_FILES):
            raise InputError(f"--model-base {base}: no language-model weights there ({', '.join(WEIGHT_FILES)})")
        return base, projector
    raise InputError(f"{folder}: no weights ({', '.join(WEIGHT_FILES)}, or {PROJECTOR_FILE} with --model-base)")


def _read_projector(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # weights_only refuses anything that is not plain tensors
        raise InputError(f"{path}: unreadable projector weights ({one_line(error, 240)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict")
    return state


def tower_key_mapping() -> dict[str, str]:
    """``from_pretrained(key_mapping=)`` for transformers 5, whose CLIP/SigLIP have no ``vision_model`` level:
    the 4.x tower keys LLaVA writes under its pin (``...vision_tower.vision_model.*``) renamed to match.
    Empty under 4.x, where the names already agree."""
    if transformers_major() < 5:
        return {}
    return {"key_mapping": {r"^model\.vision_tower\.vision_tower\.vision_model\.": "model.vision_tower.vision_tower."}}


def materialise_meta_parameters(model: Any) -> list[str]:
    """Parameters ``from_pretrained(low_cpu_mem_usage=True)`` left on the meta device, given uninitialised memory.

    transformers 4.x fills the keys it reports missing with ``torch.empty`` (no initialiser runs on the tower's
    already-initialised modules: the garbage of LLaVA-NeXT's "!!!!" trap), but before that it drops from the
    missing list every key it takes for a tied weight - and on the meta device tensors of one size all look
    shared. Real towers rarely share a size with the LLM; tiny ones do, and their parameters would stay on meta.
    They get the same ``torch.empty`` here; returns their names (none under transformers 5)."""
    import torch

    names = []
    for prefix, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                setattr(module, name, torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                                         requires_grad=param.requires_grad))
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def _load_original(folder: Path, config: dict, *, device: str, dtype: str, delay_load: bool | None, require_tokenizer: bool,
                   conv_mode: str | None, model_base: Path | None, tokenizer: str | os.PathLike | None) -> LoadedModel:
    import torch

    from ..artifacts.model_inputs import SUPPORTED_ASPECT_RATIOS, infer_conv_mode
    from ..templates.conversation import TEMPLATES
    from ..tower_loading import tower_load
    from .configs import LlavaLlamaConfig, LlavaQwenConfig
    from .model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM

    architecture = str((config.get("architectures") or [""])[0])
    llm = ORIGINAL_ARCHITECTURES.get(architecture)
    if llm is None and "qwen" in str(config.get("model_type", "")).lower():
        llm = "qwen2"
    if llm is None and config.get("model_type") in ("llava", "llava_llama"):
        llm = "llama"
    if llm is None:
        raise InputError(f"{folder}: architecture {architecture or config.get('model_type')!r}: the original-LLaVA classes "
                         f"here cover {', '.join(ORIGINAL_ARCHITECTURES)}")
    aspect = config.get("image_aspect_ratio")
    if aspect not in SUPPORTED_ASPECT_RATIOS:
        raise InputError(f"{folder}: image_aspect_ratio {aspect!r} (LLaVA-NeXT's multi-patch images) is not implemented by "
                         "llava-doctor's original-LLaVA classes; supported: square, pad")
    source, projector_file = _original_weights(folder, model_base)
    token_folder = _tokenizer_folder(folder, tokenizer, model_base, require_tokenizer)
    if conv_mode is not None and conv_mode != CORE_CONV_MODE and conv_mode not in TEMPLATES:
        raise InputError(f"--conv-mode {conv_mode!r}: unknown; known: {', '.join(sorted([*TEMPLATES, CORE_CONV_MODE]))}")
    notes: list[str] = []
    name = loader_model_name(str(folder))
    if conv_mode is None and token_folder is not None and is_bundled_tokenizer(token_folder):
        conv_mode = CORE_CONV_MODE
        notes.append("the bundled core's tokenizer: prompts use the core's own format (--conv-mode core)")
    elif conv_mode is None:
        conv_mode = infer_conv_mode(name, config)
        notes.append(f"conversation template {conv_mode!r} inferred from the model name {name!r} as LLaVA's run_llava.py "
                     "does (--conv-mode to choose)")

    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "_name_or_path")}
    reference = config.get("mm_vision_tower") or config.get("vision_tower")
    tower_folder = resolve_vision_tower(reference, folder)
    if tower_folder != reference:
        notes.append(f"mm_vision_tower {reference!r} resolved to {tower_folder}")
    fields["mm_vision_tower"] = tower_folder
    fields.setdefault("image_token_index", -200)  # llava.constants.IMAGE_TOKEN_INDEX
    config_class = LlavaQwenConfig if llm == "qwen2" else LlavaLlamaConfig
    model_class = LlavaQwenForCausalLM if llm == "qwen2" else LlavaLlamaForCausalLM
    cfg = config_class(**fields)
    if delay_load is None:  # what the codebase that wrote this config does (tower_loading: LLaVA or LLaVA-NeXT)
        plan = tower_load(config, root=str(folder), model_name=name)
        delay_load = not plan.eager
        notes.append(f"{plan.codebase} builder: the tower is {'loaded eagerly' if plan.eager else 'delay-loaded'}: "
                     f"{plan.why}")
    cfg.delay_load = bool(delay_load)

    try:
        with quiet_libraries():
            model, info = model_class.from_pretrained(
                str(source), config=cfg, low_cpu_mem_usage=True, local_files_only=True, output_loading_info=True,
                **tower_key_mapping(), **dtype_keyword(getattr(torch, dtype)))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise InputError(f"{source}: cannot load {model_class.__name__} ({one_line(error, 240)})") from None
    left_on_meta = materialise_meta_parameters(model)
    if left_on_meta:
        notes.append(f"{len(left_on_meta)} parameters from_pretrained left on the meta device (e.g. {left_on_meta[0]}) "
                     "hold uninitialised memory, as the keys it reports missing do")
    tower = model.get_vision_tower()
    loaded_by_from_pretrained = bool(tower.is_loaded)
    if projector_file is not None:
        weights = {k: v.to(getattr(torch, dtype)) for k, v in _read_projector(projector_file).items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)  # LLaVA's builder: strict=False
        applied = [k for k in weights if k not in unexpected]
        notes.append(f"{len(applied)} of {len(weights)} tensors of {projector_file.name} applied on {source}")
        info = dict(info or {})
        info["missing_keys"] = [k for k in info.get("missing_keys", []) if k not in applied]
        info["unexpected_keys"] = list(info.get("unexpected_keys", [])) + [f"{projector_file.name}:{k}" for k in unexpected]
    tok = load_tokenizer(token_folder) if token_folder is not None else None
    if tok is not None:
        _add_image_tokens(model, tok, config, notes)
    try:
        with quiet_libraries():
            if not tower.is_loaded:
                tower.load_model()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise InputError(f"vision tower {tower_folder}: cannot load it ({one_line(error, 240)})") from None
    model.to(device=device, dtype=getattr(torch, dtype))
    processor = tower.image_processor if tower.is_loaded else None
    report = _load_report(info, notes=notes, delay_load=bool(delay_load),
                          tower_loaded_by_from_pretrained=loaded_by_from_pretrained, tower_loaded_after=bool(tower.is_loaded))
    return LoadedModel(model=model, tokenizer=tok, processor=processor, family="llava-original", config=config,
                       load_report=report, conv_mode=conv_mode, name=str(folder), device=device, dtype=dtype)


def _add_image_tokens(model: Any, tokenizer: Any, config: dict, notes: list[str]) -> None:
    """LLaVA's builder: ``<im_patch>`` (unless mm_use_im_patch_token is false) and the start/end tokens are
    added; the embeddings grow when the tokenizer outgrows them (never shrunk to the tokenizer)."""
    added = []
    if config.get("mm_use_im_patch_token", True):
        added += [IMAGE_PATCH_TOKEN]
    if config.get("mm_use_im_start_end", False):
        added += [IM_START_TOKEN, IM_END_TOKEN]
    if added and tokenizer.add_tokens(added, special_tokens=True):
        notes.append(f"added {', '.join(added)} to the tokenizer, as LLaVA's builder does")
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        with quiet_libraries():
            model.resize_token_embeddings(len(tokenizer))
        notes.append(f"token embeddings resized from {rows} to {len(tokenizer)} rows for the tokenizer")
