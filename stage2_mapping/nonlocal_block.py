"""The partial non-local block (Wan et al. 2020, §3.2 "global branch"; spec §3.6).

Every latent cell attends to every other cell, but only *valid* (unscratched) cells may be
attended to and only hole cells take the result; known cells pass through unchanged.

The released formulation materialises several ``N x N`` float32 matrices (``N = h*w`` latent
cells): about 4 GB extra at a 512x512 photo and 62 GB at 1024x1024. :func:`partial_attention`
computes exactly the same quantities row-chunk by row-chunk, so its memory is linear in ``N`` for
a fixed chunk, and the chunk is sized from the memory the device has left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core.layers import residual_stack
from latent_restore.core.memory import available_memory

RENORMALIZE_EPS = 1e-12
DEFAULT_MAX_CHUNK_BYTES = 256 << 20


def validity_map(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Latent cells that are known (1) or hole (0), by the released rule (spec §3.6 step 4).

    A cell is valid only if the bilinear downsample of the mask is exactly zero there *and* the
    nearest-neighbour sample of the mask is zero, which marks slightly more cells as holes than a
    plain nearest downsample would.

    Args:
        mask: ``N x 1 x H x W``, 1 = scratch.
        size: latent ``(h, w)``.

    Returns:
        ``N x 1 x h x w`` float tensor of 0/1.
    """
    mask = mask.to(torch.float32)
    touched = (F.interpolate(mask, size=size, mode="bilinear", align_corners=False) > 0).to(mask.dtype)
    kept = F.interpolate(1.0 - mask, size=size, mode="nearest")
    return (1.0 - touched) * kept


def _chunk_rows(num_cells: int, channels: int, budget: int) -> int:
    per_row = 4 * (3 * num_cells + 2 * channels)
    return max(1, min(num_cells, budget // per_row))


def partial_attention(
    x: torch.Tensor,
    valid: torch.Tensor,
    theta: nn.Conv2d,
    phi: nn.Conv2d,
    g: nn.Conv2d,
    max_chunk_bytes: int | None = None,
) -> torch.Tensor:
    """Masked, renormalised dot-product attention, computed in row chunks.

    For each query ``i``: ``A_i = softmax_j(<theta_i, phi_j>)``; ``A'_ij = A_ij * valid_j``; each row
    is divided by ``max(sum_j A'_ij, 1e-12)`` (rows that see no valid cell become zero);
    ``y_i = sum_j A'_ij g_j``. Identical operations to the released block, so the result agrees to
    float32 rounding even where the softmax mass on valid cells is tiny.

    Args:
        x: ``N x C x h x w`` features.
        valid: ``N x 1 x h x w`` validity (1 = may be attended to).
        theta, phi, g: the block's 1x1 projections.
        max_chunk_bytes: scratch memory for one chunk of rows; ``None`` = a quarter of the memory
            available on ``x``'s device, capped at 256 MiB.

    Returns:
        ``N x C x h x w``.
    """
    n, c, h, w = x.shape
    cells = h * w
    if max_chunk_bytes is None:
        max_chunk_bytes = min(available_memory(x.device) // 4, DEFAULT_MAX_CHUNK_BYTES)
    rows = _chunk_rows(cells, c, max_chunk_bytes)
    theta_t = theta.weight.reshape(theta.out_channels, c).t()
    # Cell-major (N x C) storage: a view of channels-last features, and the output comes back
    # channels-last, so no full-size copy is made on the way in or out.
    out = torch.empty(n, h, w, g.out_channels, dtype=x.dtype, device=x.device)
    # In-place updates halve the scratch memory but would break autograd (softmax saves its output).
    inplace = not torch.is_grad_enabled()
    for b in range(n):
        xb = x[b : b + 1]
        keys, values, cells_x = _cells(phi(xb)), _cells(g(xb)), _cells(xb)
        weight = valid[b].reshape(1, cells).to(x.dtype)
        out_b = out[b].view(cells, -1)
        for start in range(0, cells, rows):
            stop = min(start + rows, cells)
            queries = torch.addmm(theta.bias, cells_x[start:stop], theta_t)
            attn = torch.softmax(queries @ keys.t(), dim=-1)
            if inplace:
                attn.mul_(weight)
                attn.div_(attn.sum(dim=-1, keepdim=True).clamp_min_(RENORMALIZE_EPS))
            else:
                attn = attn * weight
                attn = attn / attn.sum(dim=-1, keepdim=True).clamp_min(RENORMALIZE_EPS)
            out_b[start:stop] = attn @ values
            del attn, queries
    return out.permute(0, 3, 1, 2)


def _cells(t: torch.Tensor) -> torch.Tensor:
    """``1 x C x h x w`` -> ``(h*w) x C`` in raster order (a view when ``t`` is channels-last)."""
    return t[0].permute(1, 2, 0).reshape(-1, t.shape[1])


def partial_attention_naive(
    x: torch.Tensor, valid: torch.Tensor, theta: nn.Conv2d, phi: nn.Conv2d, g: nn.Conv2d
) -> torch.Tensor:
    """The released full-matrix formulation (``O(N^2)`` memory); kept for tests and benchmarks."""
    n, _, h, w = x.shape
    q = theta(x).reshape(n, -1, h * w).permute(0, 2, 1)
    k = phi(x).reshape(n, -1, h * w)
    v = g(x).reshape(n, -1, h * w).permute(0, 2, 1)
    attn = torch.softmax(torch.bmm(q, k), dim=-1)
    attn = attn * valid.reshape(n, 1, h * w).expand(n, h * w, h * w)
    attn = F.normalize(attn, p=1, dim=2, eps=RENORMALIZE_EPS)
    return torch.bmm(attn, v).permute(0, 2, 1).reshape(n, -1, h, w)


class PartialNonLocalBlock(nn.Module):
    """Attention from hole cells into valid cells, refined by residual blocks and fused by the mask.

    Args:
        channels: feature channels ``C``.
        num_res_blocks: residual blocks applied to the attention output.

    Attributes:
        max_chunk_bytes: scratch-memory cap for the chunked attention (``None`` = automatic).
        naive: use the full-matrix formulation instead (for comparison only).
    """

    def __init__(self, channels: int, num_res_blocks: int = 3) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.project = nn.Conv2d(channels, channels, 1)
        self.blocks = residual_stack(channels, num_res_blocks)
        self.max_chunk_bytes: int | None = None
        self.naive = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: x ``N x C x h x w``; mask ``N x 1 x H x W`` at image resolution (1 = scratch)."""
        valid = validity_map(mask, (x.shape[-2], x.shape[-1])).to(x.dtype)
        if self.naive:
            y = partial_attention_naive(x, valid, self.theta, self.phi, self.g)
        else:
            y = partial_attention(x, valid, self.theta, self.phi, self.g, self.max_chunk_bytes)
        # Rebinding step by step lets each full-size intermediate go as soon as it is used.
        y = self.project(y)
        y = self.blocks(y)
        return torch.where(valid > 0, x, y)
