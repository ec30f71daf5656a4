"""Vision-to-language projectors with LLaVA's names and module layout.

``mlp{N}x_gelu`` is ``Sequential(Linear, GELU, Linear, ...)`` so its Linears sit at indices
0, 2, 4, ... and a checkpoint says ``model.mm_projector.0.weight``, ``model.mm_projector.2.weight``.
"""
from __future__ import annotations

import re

from torch import nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


class IdentityMap(nn.Module):
    """The ``identity`` projector: features pass through unchanged (mm_hidden_size must equal hidden_size)."""

    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self):
        return {"mm_projector_type": "identity"}


def build_projector(projector_type: str, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    """`linear`, `mlp{N}x_gelu` or `identity`; anything else raises ValueError naming the known types."""
    if projector_type == "linear":
        return nn.Linear(mm_hidden_size, hidden_size)
    if projector_type == "identity":
        if mm_hidden_size != hidden_size:
            raise ValueError(f"identity projector needs mm_hidden_size == hidden_size, got {mm_hidden_size} vs {hidden_size}")
        return IdentityMap()
    match = _MLP_GELU.match(projector_type)
    if match:
        depth = int(match.group(1))
        if depth < 1:
            raise ValueError(f"projector depth must be >= 1, got {projector_type!r}")
        layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        return nn.Sequential(*layers)
    raise ValueError(f"Unknown projector type: {projector_type!r} (known: linear, mlp{{N}}x_gelu, identity)")
