"""Multi-scale patch attention for high-resolution scratched photos (TPAMI 2022 extension; spec §3.7).

Instead of cell-to-cell attention over the whole latent, the latent is cut into ``p x p`` tiles;
each hole tile is replaced by the most similar (cosine) non-hole tile, and a 3x3 convolution fuses
the block input, the transferred tiles and the hole map. The similarity matrix is
``#hole tiles x #known tiles`` — tiny next to the ``N x N`` matrix of the non-local block, and
computed in chunks of hole tiles where even that would not fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core.layers import ResidualBlock
from latent_restore.core.memory import available_memory
from stage2_mapping.hole_fusion import HoleFusion, blend_gate, fuse_holes

HOLE_TILE_FRACTION = 0.6
DEFAULT_MAX_SIMILARITY_BYTES = 256 << 20


def hole_map(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``1[bilinear(mask, size) > 0]``: every latent cell a scratch touches is a hole."""
    resized = F.interpolate(mask.to(torch.float32), size=size, mode="bilinear", align_corners=False)
    return (resized > 0).to(torch.float32)


def _to_tiles(x: torch.Tensor, p: int) -> torch.Tensor:
    c, h, w = x.shape
    th, tw = h // p, w // p
    tiles = x[:, : th * p, : tw * p].reshape(c, th, p, tw, p)
    return tiles.permute(1, 3, 0, 2, 4).reshape(th * tw, c * p * p)


def match_patches(
    x: torch.Tensor, holes: torch.Tensor, patch_size: int, max_similarity_bytes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decide which tiles are holes and which known tile fills each of them.

    Only hole tiles are compared, and only with known tiles; a photo without a hole tile costs
    the coverage count and nothing else. The ``#hole x #known`` similarities go through in chunks
    of hole tiles when they would not fit in ``max_similarity_bytes`` (a 4000x3000 photo at the
    finest scale would need gigabytes); below that, one product, as before.

    Args:
        x: ``C x h x w`` features of one photo.
        holes: ``h x w`` hole map (1 = hole).
        patch_size: tile side ``p``; only ``floor(h/p) x floor(w/p)`` tiles exist.
        max_similarity_bytes: memory for one chunk of similarities; ``None`` = a quarter of the
            memory available on ``x``'s device, capped at 256 MiB.

    Returns:
        ``(flags, sources)``: bool flag per tile in raster order (True = hole tile, i.e. more than
        60 % of its cells are holes) and, for each hole tile in raster order, the raster index of
        the known tile with the highest cosine similarity. ``sources`` is empty when there is no
        hole tile or no known tile.
    """
    p = patch_size
    th, tw = x.shape[1] // p, x.shape[2] // p
    cover = holes[: th * p, : tw * p].reshape(th, p, tw, p).mean(dim=(1, 3)).reshape(-1)
    flags = cover > HOLE_TILE_FRACTION
    hole_idx = torch.nonzero(flags).flatten()
    known_idx = torch.nonzero(~flags).flatten()
    if hole_idx.numel() == 0 or known_idx.numel() == 0:
        return flags, hole_idx.new_empty(0)
    if max_similarity_bytes is None:
        max_similarity_bytes = min(available_memory(x.device) // 4, DEFAULT_MAX_SIMILARITY_BYTES)
    rows = max(1, max_similarity_bytes // (known_idx.numel() * x.element_size()))
    tiles = F.normalize(_to_tiles(x, p), dim=1, eps=1e-12)
    known = tiles[known_idx].t()
    best = torch.cat([(tiles[chunk] @ known).argmax(dim=1) for chunk in hole_idx.split(rows)])
    return flags, known_idx[best]


def transfer_reference(x: torch.Tensor, holes: torch.Tensor, p: int) -> torch.Tensor:
    """The released patch transfer, kept as the reference for tests and benchmarks: every tile
    flattened, the hole tiles replaced by their sources, all tiles re-assembled (tiles that do not
    fit the latent become zero).

    Args:
        x: ``N x C x H x W`` latent features.
        holes: ``N x 1 x H x W`` hole map at the latent's size.
        p: tile side in latent cells.
    """
    out = []
    for b in range(x.shape[0]):
        flags, sources = match_patches(x[b], holes[b, 0], p)
        if sources.numel() == 0:
            out.append(x[b])
            continue
        c, h, w = x[b].shape
        th, tw = h // p, w // p
        tiles = _to_tiles(x[b], p).clone()
        tiles[torch.nonzero(flags).flatten()] = tiles[sources]
        filled = x.new_zeros(c, h, w)
        filled[:, : th * p, : tw * p] = (
            tiles.reshape(th, tw, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, th * p, tw * p)
        )
        out.append(filled)
    return torch.stack(out)


class PatchAttention(nn.Module):
    """One scale of patch attention.

    Args:
        channels: feature channels ``C``.
        patch_size: tile side in latent cells.
        fusion: ``replace`` (released): the fused features replace the input everywhere.
            ``blend``: only the hole cells move, from the input towards them, by the learned gate
            ``blend`` (:class:`~stage2_mapping.hole_fusion.HoleFusion`), so a layer whose gate is
            still closed passes a trained trunk's features through untouched.
    """

    def __init__(self, channels: int, patch_size: int, fusion: HoleFusion = HoleFusion.REPLACE) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.block = ResidualBlock(channels)
        self.combine = nn.Conv2d(2 * channels + 1, channels, 3, padding=1)
        self.blend = blend_gate(fusion, channels)

    def transfer(self, x: torch.Tensor, holes: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Copy the best-matching known tile into each hole tile, per photo of the batch.

        Where at least one tile is copied, cells outside the tile grid (the right/bottom remainder
        when the latent side is not a multiple of the tile) become zero, as in the released model.
        A photo whose tiles are all holes has nothing to copy from and keeps its features (the
        released model raises an error there).

        Only the hole tiles are written, from a gathered copy of their sources (sources are known
        tiles, so no source is overwritten before it is read); a photo without a hole tile is not
        touched at all.

        Args:
            x: ``N x C x h x w`` features.
            holes: ``N x 1 x h x w`` hole map.
            inplace: write into ``x`` (at inference, where ``x`` is a fresh intermediate) instead
                of into a copy.
        """
        p = self.patch_size
        out = x if inplace else x.clone()
        for b in range(x.shape[0]):
            flags, sources = match_patches(x[b], holes[b, 0], p)
            if sources.numel() == 0:
                continue
            h, w = x.shape[-2:]
            th, tw = h // p, w // p
            targets = torch.nonzero(flags).flatten()
            # (th, tw, C, p, p) view of the tile grid: tile (i, j) is grid[i, j].
            grid = out[b, :, : th * p, : tw * p].unflatten(1, (th, p)).unflatten(3, (tw, p))
            grid = grid.permute(1, 3, 0, 2, 4)
            grid[targets // tw, targets % tw] = grid[sources // tw, sources % tw]
            out[b, :, th * p :, :] = 0
            out[b, :, :, tw * p :] = 0
        return out

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: z ``N x C x h x w``; mask ``N x 1 x H x W`` at image resolution (1 = scratch)."""
        holes = hole_map(mask, (z.shape[-2], z.shape[-1])).to(z.dtype)
        transferred = self.transfer(self.block(z), holes, inplace=not torch.is_grad_enabled())
        fused = self.combine(torch.cat([z, transferred, holes], dim=1))
        return fused if self.blend is None else fuse_holes(z, fused, holes, self.blend)
