"""Overlapping tiles with blended seams, for photos too large to restore in one piece."""

from __future__ import annotations

from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1 in the middle, rising linearly over ``overlap`` samples towards inner borders."""
    weight = torch.ones(length)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            weight[:overlap] = ramp
        if not at_end:
            weight[-overlap:] = ramp.flip(0)
    return weight


def run_tiled(
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    image: torch.Tensor,
    mask: torch.Tensor | None,
    tile: int | tuple[int, int],
    overlap: int,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply an image-to-image ``fn`` tile by tile and blend the overlaps linearly.

    Args:
        fn: maps ``N x C x h x w`` (and an optional ``N x 1 x h x w`` mask) to a tensor of the same
            spatial size.
        image: ``N x C x H x W``.
        mask: ``N x 1 x H x W`` or None; cut with the same tiles.
        tile: tile side in pixels, or ``(height, width)`` of rectangular tiles.
        overlap: overlap between neighbouring tiles in pixels (seams are blended across it).
        progress: called with ``(done, total)`` after each tile.

    Returns:
        ``N x C' x H x W``.
    """
    h, w = image.shape[-2:]
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    ys, xs = tile_starts(h, tile_h, overlap), tile_starts(w, tile_w, overlap)
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, h, w)
    count = len(ys) * len(xs)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            th, tw = min(tile_h, h - y), min(tile_w, w - x)
            piece_mask = None if mask is None else mask[..., y : y + th, x : x + tw]
            piece = fn(image[..., y : y + th, x : x + tw], piece_mask).to(torch.float32).cpu()
            if out is None:  # channels-last, as the networks return it: no copy to make an array of
                out = torch.empty(image.shape[0], piece.shape[1], h, w, memory_format=torch.channels_last)
                out.zero_()
            wy = _ramp(th, min(overlap, th), y == 0, y + th == h)
            wx = _ramp(tw, min(overlap, tw), x == 0, x + tw == w)
            weight = (wy[:, None] * wx[None, :])[None, None]
            out[..., y : y + th, x : x + tw] += piece * weight
            total[..., y : y + th, x : x + tw] += weight
            if progress is not None:
                progress(i * len(xs) + j + 1, count)
    assert out is not None
    return out.div_(total)
