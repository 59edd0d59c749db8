"""The partial non-local block (Wan et al. 2020, §3.2 "global branch"; spec §3.6).

Every latent cell attends to every other cell, but only *valid* (unscratched) cells may be
attended to and only hole cells take the result; known cells pass through unchanged.

The released formulation materialises several ``N x N`` float32 matrices (``N = h*w`` latent
cells): about 4 GB extra at a 512x512 photo and 62 GB at 1024x1024. :func:`partial_attention`
computes the same quantities through the fused ``scaled_dot_product_attention`` kernel, which never
holds more than a tile of scores, so its memory is linear in ``N``; the query rows still go through
in chunks sized from the memory the device has left. :func:`partial_attention_chunked` (explicit
row chunks of the matrices) and :func:`partial_attention_naive` (the released full matrices) stay
for comparison and tests.
"""

from __future__ import annotations

import enum
import functools
import logging
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from latent_restore.core.layers import residual_stack
from latent_restore.core.memory import available_memory
from stage2_mapping.hole_fusion import HoleFusion, blend_gate, fuse_holes

logger = logging.getLogger(__name__)

RENORMALIZE_EPS = 1e-12
DEFAULT_MAX_CHUNK_BYTES = 256 << 20
HEAD_DIM_MULTIPLE = 8
FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
"""Kernels that never materialise the score matrix; the math backend is excluded on purpose."""


class AttentionKernel(str, enum.Enum):
    """How :class:`PartialNonLocalBlock` evaluates its attention (all give the released result).

    ``fused`` is the default; ``chunked`` (explicit row chunks of the ``N x N`` matrices, the
    previous implementation) and ``full`` (the released matrices, ``O(N^2)`` memory) are kept for
    benchmarks and tests.
    """

    FUSED = "fused"
    CHUNKED = "chunked"
    FULL = "full"


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


def _chunk_rows(num_cells: int, per_row_bytes: int, budget: int) -> int:
    return max(1, min(num_cells, budget // per_row_bytes))


def _chunk_budget(x: torch.Tensor, max_chunk_bytes: int | None) -> int:
    if max_chunk_bytes is not None:
        return max_chunk_bytes
    return min(available_memory(x.device) // 4, DEFAULT_MAX_CHUNK_BYTES)


def _padded_projection(conv: nn.Conv2d, in_channels: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 convolution as ``(bias, weight)`` for ``addmm`` whose output has ``width`` columns.

    The columns beyond ``conv.out_channels`` are exactly zero, so they add nothing to a dot product.
    """
    out = conv.out_channels
    weight = conv.weight.reshape(out, in_channels).t()
    bias = conv.bias if conv.bias is not None else weight.new_zeros(out)
    if width == out:
        return bias, weight
    return F.pad(bias, (0, width - out)), F.pad(weight, (0, width - out))


@functools.cache
def fused_kernel_available(device: torch.device, dtype: torch.dtype, width: int, requires_grad: bool) -> bool:
    """Whether a fused attention kernel accepts ``width``-wide heads of ``dtype`` on ``device``.

    Asked once per combination with a tiny probe, because which kernels apply depends on the
    device, the dtype, the head width and autograd, and the library only says so by raising.
    """
    shape = (1, 1, HEAD_DIM_MULTIPLE, width)
    probe = torch.zeros(shape, device=device, dtype=dtype, requires_grad=requires_grad)
    try:
        with warnings.catch_warnings(), sdpa_kernel(FUSED_BACKENDS), torch.enable_grad():
            warnings.simplefilter("ignore")
            out = F.scaled_dot_product_attention(probe, probe, probe, scale=1.0)
            if requires_grad:
                out.sum().backward()
    except RuntimeError as error:
        logger.warning("no fused attention for %s %s heads of width %d: %s", device, dtype, width, error)
        return False
    return True


def partial_attention(
    x: torch.Tensor,
    valid: torch.Tensor,
    theta: nn.Conv2d,
    phi: nn.Conv2d,
    g: nn.Conv2d,
    max_chunk_bytes: int | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Masked, renormalised dot-product attention through the fused attention kernel.

    The released rule (spec §3.6 steps 2-6), for each query ``i``: ``A_i = softmax_j(<theta_i,
    phi_j>)``; ``A'_ij = A_ij * valid_j``; each row is divided by ``max(sum_j A'_ij, 1e-12)``, so a
    row whose valid mass is tiny is scaled down and one with none becomes zero;
    ``y_i = sum_j A'_ij g_j``.

    One fused call gives both sums that rule needs: the values are ``[valid_j * g_j, valid_j]``
    (one extra column), so the kernel's output row is ``[sum_j A'_ij g_j, sum_j A'_ij]`` with the
    softmax over *all* keys, exactly as released; dividing the first part by the clamped last
    column is the renormalisation. Keys, queries and values are padded with zero columns to a
    common width (the kernel needs one), which changes no score.

    Where no fused kernel accepts the inputs (:func:`fused_kernel_available`) this falls back to
    :func:`partial_attention_chunked` (same result, same linear memory) rather than to the math
    kernel, which would hold ``rows x N`` scores for chunks sized for the fused one.

    Args:
        x: ``N x C x h x w`` features (channels-last avoids any full-size copy).
        valid: ``N x 1 x h x w`` validity (1 = may be attended to).
        theta, phi, g: the block's 1x1 projections.
        max_chunk_bytes: scratch memory for one chunk of query rows; ``None`` = a quarter of the
            memory available on ``x``'s device, capped at 256 MiB.
        window: ``None``, or a map no larger than ``window`` cells on its long side: every query
            attends over the whole map (the released block). Otherwise the queries go in blocks
            of ``window // 2`` cells a side, and each block attends over a ``window``-sided square
            of keys around it (shifted inward at the borders, so it always has the full side): the
            softmax, the validity weights and the renormalisation are the released ones, over
            that square. The work per query is then bounded by ``window ** 2`` instead of growing
            with the photo (:func:`windowed_attention_blocks`).

    Returns:
        ``N x C' x h x w`` (``C'`` = ``g.out_channels``), channels-last.
    """
    n, c, h, w = x.shape
    cells = h * w
    dv = g.out_channels
    width = -(-max(theta.out_channels, dv + 1) // HEAD_DIM_MULTIPLE) * HEAD_DIM_MULTIPLE
    requires_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, theta.weight, phi.weight, g.weight)
    )
    if not fused_kernel_available(x.device, x.dtype, width, requires_grad):
        return attend_in_windows(
            lambda xs, vs: partial_attention_chunked(xs, vs, theta, phi, g, max_chunk_bytes), x, valid, window
        )
    # Per query row: the queries, the kernel's output and (under autograd) the divided result.
    rows = _chunk_rows(cells, 3 * width * x.element_size(), _chunk_budget(x, max_chunk_bytes))
    q_bias, q_weight = _padded_projection(theta, c, width)
    k_bias, k_weight = _padded_projection(phi, c, width)
    v_bias, v_weight = _padded_projection(g, c, width)
    out = torch.empty(n, h, w, dv, dtype=x.dtype, device=x.device)
    inplace = not torch.is_grad_enabled()  # writing through out= is not differentiable
    blocks = windowed_attention_blocks(h, w, window)
    for b in range(n):
        cells_x = _cells(x[b : b + 1])
        weight = valid[b].reshape(cells, 1).to(x.dtype)
        if inplace and not bool(weight.any()):
            out[b].zero_()  # no valid cell: every row of A' is zero, as released
            continue
        keys = torch.addmm(k_bias, cells_x, k_weight)
        values = torch.addmm(v_bias, cells_x, v_weight)
        values[:, :dv] *= weight
        values[:, dv : dv + 1] = weight
        keys, values = keys.view(h, w, width), values.view(h, w, width)
        grid_x = cells_x.view(h, w, c)
        for (rows_at, cols_at), keys_at in blocks:
            block_x = grid_x[rows_at, cols_at]
            block_keys = keys[keys_at].reshape(1, 1, -1, width)
            block_values = values[keys_at].reshape(1, 1, -1, width)
            # Chunks of whole block rows, so each chunk's result lands in a rectangle of ``out``.
            span = block_x.shape[1]
            step = max(1, rows // span)
            for top in range(0, block_x.shape[0], step):
                chunk = block_x[top : top + step]
                queries = torch.addmm(q_bias, chunk.reshape(-1, c), q_weight)[None, None]
                with sdpa_kernel(FUSED_BACKENDS):
                    fused = F.scaled_dot_product_attention(queries, block_keys, block_values, scale=1.0)[0, 0]
                del queries
                fused = fused.view(chunk.shape[0], span, width)
                mass = fused[..., dv : dv + 1].clamp_min(RENORMALIZE_EPS)
                target = (slice(rows_at.start + top, rows_at.start + top + chunk.shape[0]), cols_at)
                if inplace:
                    torch.div(fused[..., :dv], mass, out=out[b][target])
                else:
                    out[b][target] = fused[..., :dv] / mass
                del fused, mass
            del block_keys, block_values
        del keys, values
    return out.permute(0, 3, 1, 2)


Window = tuple[slice, slice]


def windowed_attention_blocks(height: int, width: int, window: int | None) -> list[tuple[Window, Window]]:
    """The query blocks of a ``height x width`` map and the key square each attends over.

    ``None`` or a map no larger than ``window`` on its long side: one block, the whole map,
    attending over the whole map. Otherwise blocks of ``window // 2`` cells a side in raster
    order, each with the ``window``-sided square (``min(window, side)`` where the map is thinner)
    centred on it as far as the map's borders allow.
    """
    if window is None or max(height, width) <= window:
        whole = (slice(0, height), slice(0, width))
        return [(whole, whole)]
    if window < 2:
        raise ValueError(f"attention window must be at least 2 cells, got {window}")
    step = window // 2
    margin = (window - step) // 2

    def spans(size: int) -> list[tuple[slice, slice]]:
        side = min(window, size)
        out = []
        for start in range(0, size, step):
            stop = min(start + step, size)
            key_start = min(max(start - margin, 0), size - side)
            out.append((slice(start, stop), slice(key_start, key_start + side)))
        return out

    return [((qy, qx), (ky, kx)) for qy, ky in spans(height) for qx, kx in spans(width)]


def attend_in_windows(
    attend: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    valid: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """A whole-map attention ``attend(x, valid)`` restricted to the windows of
    :func:`windowed_attention_blocks`: each query block keeps its rows of ``attend`` run on its key
    square. The straightforward form of what :func:`partial_attention` does in place; it serves
    the chunked and full-matrix kernels (and the tests, as the reference of the windowed rule).
    """
    n, _, h, w = x.shape
    blocks = windowed_attention_blocks(h, w, window)
    if len(blocks) == 1:
        return attend(x, valid)
    out: torch.Tensor | None = None
    for (rows_at, cols_at), (key_rows, key_cols) in blocks:
        y = attend(x[..., key_rows, key_cols], valid[..., key_rows, key_cols])
        if out is None:
            out = y.new_empty(n, y.shape[1], h, w).contiguous(memory_format=torch.channels_last)
        top, left = rows_at.start - key_rows.start, cols_at.start - key_cols.start
        out[..., rows_at, cols_at] = y[
            ..., top : top + rows_at.stop - rows_at.start, left : left + cols_at.stop - cols_at.start
        ]
    assert out is not None
    return out


def partial_attention_chunked(
    x: torch.Tensor,
    valid: torch.Tensor,
    theta: nn.Conv2d,
    phi: nn.Conv2d,
    g: nn.Conv2d,
    max_chunk_bytes: int | None = None,
) -> torch.Tensor:
    """The same attention with explicit row chunks of the ``N x N`` matrices (the previous kernel).

    Identical operations to the released block, chunk by chunk, so it agrees to float32 rounding
    even where the softmax mass on valid cells is tiny. Arguments as :func:`partial_attention`;
    the chunk holds ``rows x N`` scores.
    """
    n, c, h, w = x.shape
    cells = h * w
    rows = _chunk_rows(cells, 4 * (3 * cells + 2 * c), _chunk_budget(x, max_chunk_bytes))
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
        fusion: how hole cells combine the attention result with their own features
            (:class:`~stage2_mapping.hole_fusion.HoleFusion`); ``blend`` adds the gate ``blend``.

    Attributes:
        max_chunk_bytes: scratch-memory cap for one chunk of query rows (``None`` = automatic).
        kernel: how the attention is evaluated (:class:`AttentionKernel`; all agree).
        window: ``None`` (the released block): every cell attends over the whole map. A side in
            latent cells: attention within windows of that side (:func:`partial_attention`), so
            its time grows with the photo's area, not its square; set by the pipeline's plan.
    """

    def __init__(
        self, channels: int, num_res_blocks: int = 3, fusion: HoleFusion = HoleFusion.REPLACE
    ) -> None:
        super().__init__()
        self.fusion = HoleFusion(fusion)
        self.blend = blend_gate(self.fusion, channels)
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.project = nn.Conv2d(channels, channels, 1)
        self.blocks = residual_stack(channels, num_res_blocks)
        self.max_chunk_bytes: int | None = None
        self.kernel = AttentionKernel.FUSED
        self.window: int | None = None

    @property
    def naive(self) -> bool:
        """``True`` while the released full-matrix formulation is selected (for comparisons)."""
        return self.kernel is AttentionKernel.FULL

    @naive.setter
    def naive(self, value: bool) -> None:
        self.kernel = AttentionKernel.FULL if value else AttentionKernel.FUSED

    def attention(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The attention output ``y`` before the projection (``N x C x h x w``), by :attr:`kernel`."""
        kernel = AttentionKernel(self.kernel)
        if kernel is AttentionKernel.FUSED:
            return partial_attention(
                x, valid, self.theta, self.phi, self.g, self.max_chunk_bytes, self.window
            )
        if kernel is AttentionKernel.FULL:
            return attend_in_windows(
                lambda xs, vs: partial_attention_naive(xs, vs, self.theta, self.phi, self.g),
                x,
                valid,
                self.window,
            )
        return attend_in_windows(
            lambda xs, vs: partial_attention_chunked(
                xs, vs, self.theta, self.phi, self.g, self.max_chunk_bytes
            ),
            x,
            valid,
            self.window,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: x ``N x C x h x w``; mask ``N x 1 x H x W`` at image resolution (1 = scratch)."""
        valid = validity_map(mask, (x.shape[-2], x.shape[-1])).to(x.dtype)
        if not torch.is_grad_enabled() and bool(valid.all()):
            # No hole: the fusion below keeps every cell of x, so nothing else needs computing.
            # (Only at inference: in training the parameters must stay in the graph.)
            return x
        y = self.attention(x, valid)
        # Rebinding step by step lets each full-size intermediate go as soon as it is used.
        y = self.project(y)
        y = self.blocks(y)
        return fuse_holes(x, y, 1.0 - valid, self.blend)
