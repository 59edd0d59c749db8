"""How a hole-filling attention layer's result enters the features of the holes.

Shared by the partial non-local block and the patch attention, so both mappings offer the same
choice and a config names it once (``model.hole_fusion``).
"""

from __future__ import annotations

import enum

import torch
from torch import nn


class HoleFusion(str, enum.Enum):
    """What a hole cell of an attention layer's output is made of.

    ``replace`` (released): the layer's result alone; whatever the trunk made of the hole is
    dropped. ``blend``: ``x + a * (y - x)`` with a learned per-channel gate ``a`` that starts at
    zero, for holes filled by inpainting before encoding: their own features are then a usable
    guess, which the layer corrects instead of discarding, and a layer whose gate is still closed
    restores exactly as the trunk alone does.
    """

    REPLACE = "replace"
    BLEND = "blend"


def blend_gate(fusion: HoleFusion, channels: int) -> nn.Parameter | None:
    """The closed per-channel gate ``1 x C x 1 x 1`` a ``blend`` layer learns; ``None`` otherwise."""
    return nn.Parameter(torch.zeros(1, channels, 1, 1)) if HoleFusion(fusion) is HoleFusion.BLEND else None


def fuse_holes(
    x: torch.Tensor, y: torch.Tensor, holes: torch.Tensor, gate: torch.Tensor | None
) -> torch.Tensor:
    """The hole cells of ``y`` (no gate) or of ``x`` moved towards ``y`` by the gate; ``x`` elsewhere.

    Args:
        x: the layer's input features ``N x C x h x w``.
        y: its result, same shape.
        holes: ``N x 1 x h x w``, nonzero where a cell is a hole.
        gate: the ``blend`` gate, or ``None`` for ``replace``.
    """
    if gate is not None:
        y = torch.lerp(x, y, gate)
    return torch.where(holes > 0, y, x)
