"""A vision tower wrapper with haotian-liu/LLaVA's semantics, on transformers' CLIP/SigLIP models.

- ``VisionTower(name_or_path, args, delay_load=False)``: with ``delay_load`` (and without
  ``unfreeze_mm_vision_tower``) only the tower's config is read (``cfg_only``) and no weights
  exist, so the model's state dict has no ``model.vision_tower.vision_tower.*`` keys until
  ``load_model()`` runs - the root of LLaVA's delay-load traps.
- ``load_model()`` builds the transformers model from the local folder's config.json, loads its
  model.safetensors (gathering first when ZeRO-3 partitioned the freshly built parameters),
  freezes it and marks the wrapper loaded; a second call only logs "already loaded".
- ``select_layer`` indexes ``hidden_states`` (-2 by default); ``select_feature="patch"`` drops
  CLIP's CLS token (SigLIP has none), ``"cls_patch"`` keeps everything.

The name must be an existing local folder (no hub): anything else raises ``ValueError('Unknown
vision tower: ...')`` like LLaVA's ``build_vision_tower``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

_MODEL_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
# full CLIP / SigLIP folders (hub towers such as openai/clip-vit-large-patch14-336) whose config nests vision_config
_FULL_MODEL_TYPES = {"clip": "clip", "siglip": "siglip"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _classes(kind: str):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    return {"clip": (CLIPVisionConfig, CLIPVisionModel), "siglip": (SiglipVisionConfig, SiglipVisionModel)}[kind]


def tower_kind(folder: str | Path) -> str:
    """'clip' or 'siglip' from the folder's config.json model_type (not from its name)."""
    model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    kinds = {**_MODEL_TYPES, **_FULL_MODEL_TYPES}
    if model_type not in kinds:
        raise ValueError(f"{folder}: unsupported vision model_type {model_type!r} (known: {', '.join(kinds)})")
    return kinds[model_type]


def read_vision_config(folder: str | Path):
    config_class, _ = _classes(tower_kind(folder))
    return config_class.from_pretrained(str(folder), local_files_only=True)


def read_image_processor(folder: str | Path, vision_config):
    """The tower's image processor, as LLaVA's ``load_model`` sets ``self.image_processor``: the folder's
    preprocessor_config.json when it has one; otherwise (the core's own towers) the core's preprocessing
    (``data.image_to_tensor``: mean and std 0.5) at the tower's image size."""
    import transformers

    kind = tower_kind(folder)
    name = "CLIPImageProcessor" if kind == "clip" else "SiglipImageProcessor"
    # transformers 5 without torchvision: the PIL classes (the plain names warn, then fall back to them)
    processor_class = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    if (Path(folder) / "preprocessor_config.json").is_file():
        return processor_class.from_pretrained(str(folder), local_files_only=True)
    side = vision_config.image_size
    if kind == "clip":
        return processor_class(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return processor_class(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def read_tower_weights(folder: str | Path, expected: list[str]) -> dict[str, torch.Tensor]:
    """The vision weights of a tower folder keyed as the built model names them: the core's own single
    file, or a hub CLIP/SigLIP folder (``pytorch_model.bin`` read with ``weights_only``; a full model's text
    half dropped; the 4.x ``vision_model.`` level added or removed to match this transformers)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        raise ValueError(f"{folder}: no tower weights ({' or '.join(WEIGHT_FILES)})")
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    wanted = set(expected)
    out = {}
    for key, tensor in state.items():
        for candidate in (key, key.removeprefix("vision_model."), f"vision_model.{key}"):
            if candidate in wanted:
                out[candidate] = tensor
                break
    return out


def build_base_vision_tower(out_dir: str | Path, vision_config, seed: int = 0, pretrain_steps: int = 0) -> Path:
    """Write a seeded base tower (config.json + model.safetensors) to `out_dir`.

    With `pretrain_steps` the tower is first trained briefly to classify the synthetic pictures'
    shape, colour and position from its mean selected feature - a stand-in for CLIP's pretraining.
    A randomly initialised tower carries colour but hardly any shape information in the features
    LLaVA selects, so a model on top of it cannot learn to name shapes. The folder is written to
    a temporary name and renamed, so concurrent builders never see half a tower.
    """
    import shutil
    import tempfile

    kind = _MODEL_TYPES[vision_config.model_type]
    _, model_class = _classes(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(vision_config)
        if pretrain_steps:
            pretrain_on_shapes(model, has_cls_token=kind == "clip", steps=pretrain_steps, seed=seed)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    from safetensors.torch import save_file

    # what save_pretrained writes for a single-file model, without its progress bar
    model.config.save_pretrained(str(staging))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    try:
        staging.rename(out_dir)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def pretrain_on_shapes(model, *, has_cls_token: bool, steps: int, seed: int, batch_size: int = 64, select_layer: int = -2) -> float:
    """Train `model` with three linear heads (shape, colour, position) on its mean selected feature; returns the last loss."""
    from .data import build_samples, image_to_tensor
    from .images import COLORS, POSITIONS, SHAPES

    samples = build_samples(1024, seed=seed + 777, prefix="tower")
    images = torch.stack([image_to_tensor(s.image) for s in samples])
    targets = [
        torch.tensor([list(values).index(getattr(s, attribute)) for s in samples])
        for values, attribute in ((SHAPES, "shape"), (COLORS, "color"), (POSITIONS, "position"))
    ]
    hidden = model.config.hidden_size
    heads = nn.ModuleList([nn.Linear(hidden, len(SHAPES)), nn.Linear(hidden, len(COLORS)), nn.Linear(hidden, len(POSITIONS))])
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        index = torch.randint(0, len(samples), (batch_size,), generator=generator)
        features = model(images[index], output_hidden_states=True).hidden_states[select_layer]
        pooled = (features[:, 1:] if has_cls_token else features).mean(1)
        loss = sum(nn.functional.cross_entropy(head(pooled), target[index]) for head, target in zip(heads, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def _is_zero_partitioned(params) -> bool:
    return any(hasattr(p, "ds_id") for p in params)


def load_weights(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Strictly load `state_dict`; ZeRO-3 partitioned parameters are gathered, written on rank 0, re-partitioned."""
    params = list(module.parameters())
    if _is_zero_partitioned(params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                module.load_state_dict(state_dict, strict=True)
    else:
        module.load_state_dict(state_dict, strict=True)


class VisionTower(nn.Module):
    def __init__(self, vision_tower: str | Path, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = str(vision_tower)
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        folder = Path(self.vision_tower_name)
        if not (folder / "config.json").is_file():
            raise ValueError(f"Unknown vision tower: {self.vision_tower_name}")
        self.kind = tower_kind(folder)
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            self.cfg_only = read_vision_config(folder)

    def load_model(self) -> None:
        if self.is_loaded:
            logger.warning("%s is already loaded, `load_model` called again, skipping.", self.vision_tower_name)
            return
        folder = Path(self.vision_tower_name)
        _, model_class = _classes(self.kind)
        model = model_class(read_vision_config(folder))
        if not next(model.parameters()).is_meta:  # inside an outer from_pretrained the checkpoint fills it instead
            load_weights(model, read_tower_weights(folder, list(model.state_dict())))
        model.requires_grad_(False)
        self.vision_tower = model
        self.is_loaded = True

    @property
    def image_processor(self):
        """LLaVA's ``vision_tower.image_processor`` (set by ``load_model``); built on first use."""
        if not self.is_loaded:
            raise AttributeError(f"vision tower {self.vision_tower_name} is not loaded: it has no image_processor yet")
        if getattr(self, "_image_processor", None) is None:
            self._image_processor = read_image_processor(self.vision_tower_name, self.config)
        return self._image_processor

    @property
    def config(self):
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def has_cls_token(self) -> bool:
        return self.kind == "clip"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    def feature_select(self, hidden_states) -> torch.Tensor:
        features = hidden_states[self.select_layer]
        if self.select_feature == "patch":
            return features[:, 1:] if self.has_cls_token else features
        if self.select_feature == "cls_patch":
            return features
        raise ValueError(f"Unexpected select feature: {self.select_feature}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.is_loaded:
            raise RuntimeError(
                f"vision tower {self.vision_tower_name} is not loaded (delay_load); call load_model() before forward"
            )
        outputs = self.vision_tower(images.to(dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(outputs.hidden_states).to(images.dtype)
