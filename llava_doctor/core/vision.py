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


def _classes(kind: str):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    return {"clip": (CLIPVisionConfig, CLIPVisionModel), "siglip": (SiglipVisionConfig, SiglipVisionModel)}[kind]


def tower_kind(folder: str | Path) -> str:
    """'clip' or 'siglip' from the folder's config.json model_type (not from its name)."""
    model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"{folder}: unsupported vision model_type {model_type!r} (known: {', '.join(_MODEL_TYPES)})")
    return _MODEL_TYPES[model_type]


def read_vision_config(folder: str | Path):
    config_class, _ = _classes(tower_kind(folder))
    return config_class.from_pretrained(str(folder), local_files_only=True)


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
        from safetensors.torch import load_file

        folder = Path(self.vision_tower_name)
        _, model_class = _classes(self.kind)
        model = model_class(read_vision_config(folder))
        if not next(model.parameters()).is_meta:  # inside an outer from_pretrained the checkpoint fills it instead
            load_weights(model, load_file(str(folder / "model.safetensors")))
        model.requires_grad_(False)
        self.vision_tower = model
        self.is_loaded = True

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
