"""Conversions between 8-bit photos and network tensors, and padding to a network's multiple.

Contract: inside networks images are RGB (or gray) float ``N x C x H x W`` in [-1, 1]; masks are
float ``N x 1 x H x W`` with 1 = defect. Nothing here resizes: a photo whose sides are not a
multiple of what a network needs is padded and the result cropped back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x C`` (or ``H x W``) -> float32 ``1 x C x H x W`` in [-1, 1] (``(v/255 - 0.5)/0.5``)."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    t = torch.from_numpy(np.array(image, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return (t / 255.0 - 0.5) / 0.5


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``H x W`` mask (bool, 0/1 or 0/255) -> float32 ``1 x 1 x H x W`` of 0/1."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    scale = 255.0 if m.dtype == np.uint8 and m.max(initial=0) > 1 else 1.0
    return torch.from_numpy(m.astype(np.float32) / scale)[None, None]


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """``1 x C x H x W`` in [-1, 1] -> uint8 ``H x W x C`` (``H x W`` for one channel), rounded.

    No min-max stretching: the restored photo keeps its own black and white points.
    """
    t = ((tensor.detach()[0].to(torch.float32).cpu() + 1.0) * 127.5).clamp(0, 255).round()
    out = t.to(torch.uint8).permute(1, 2, 0).numpy()
    return out[..., 0] if out.shape[-1] == 1 else out


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "reflect"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the right/bottom of ``x`` (``N x C x H x W``) so both sides are multiples of ``multiple``.

    Reflection keeps statistics (and instance norms) close to the unpadded photo; it falls back to
    replication when a side is too small to reflect.

    Returns:
        The padded tensor and the original ``(H, W)`` for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` for a result at the same scale."""
    return x[..., : size[0], : size[1]]
