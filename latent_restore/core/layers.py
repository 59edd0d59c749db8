"""Blocks shared by more than one network."""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

INSTANCE_NORM_EPS = 1e-5
NORM_BLOCK_ELEMENTS = 1 << 22
"""Scratch elements (16 MiB in float32) for one slab of the channels-last variance pass."""


def _inference(x: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and x.requires_grad)


def instance_norm(x: torch.Tensor) -> torch.Tensor:
    """Instance normalisation without affine parameters or running statistics (stores nothing).

    Callers pass a freshly computed tensor: at inference it is normalised in place, which saves a
    full copy of the feature map — the difference between fitting and not fitting a large photo.
    On the CPU the in-place kernels below are also faster than ``F.instance_norm`` on either memory
    layout: 1.6-2.3x on NCHW and 2.7-7.7x on channels-last at 1x64x512x512 and 1x512x128x128 with
    one and two threads, where the previous ``torch.var_mean`` (Welford) version was 2.2-6.3x
    slower than these (``benchmarks/nonlocal_fused.py``).
    """
    if not _inference(x):
        return F.instance_norm(x, eps=INSTANCE_NORM_EPS)
    if x.device.type == "cpu" and x.dim() == 4:
        if x.is_contiguous() and x.dtype in (torch.float32, torch.float64):
            return _instance_norm_contiguous_(x)
        return _instance_norm_slabs_(x)
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), keepdim=True, correction=0)
    return x.sub_(mean).div_(var.add_(INSTANCE_NORM_EPS).sqrt_())


def _instance_norm_contiguous_(x: torch.Tensor) -> torch.Tensor:
    """NCHW in place through the batch-norm kernel ``F.instance_norm`` itself uses.

    Every (photo, channel) pair is one channel of a ``1 x NC x H x W`` view; the kernel reduces
    in double precision, then writes ``x * invstd - mean * invstd`` element by element, so the
    output may alias the input and the result equals ``F.instance_norm`` bit for bit.
    """
    n, c = x.shape[:2]
    flat = x.view(1, n * c, *x.shape[2:])
    mean, invstd = x.new_empty(n * c), x.new_empty(n * c)
    args = (flat, None, None, None, None, True, 0.0, INSTANCE_NORM_EPS)  # no affine, no running stats
    torch.ops.aten.native_batch_norm.out(*args, out=flat, save_mean=mean, save_invstd=invstd)
    return x


def _instance_norm_slabs_(x: torch.Tensor) -> torch.Tensor:
    """Any layout (channels-last above all) in place: two-pass statistics, one write pass.

    The batch-norm kernel's channels-last path accumulates in float32 row after row (1e-4 off at
    512x512) and ``var_mean`` is slow, so: the mean by one (cascaded, accurate) summation, the
    variance as the sum of squared deviations over slabs of rows that fit in a small scratch
    buffer, and ``x * invstd + (-mean * invstd)`` written back in place, as the released kernel does.
    Reduced-precision inputs are summed in float32.
    """
    n, c, h, w = x.shape
    count = h * w
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = max(1, min(h, NORM_BLOCK_ELEMENTS // max(1, n * c * w)))
    scratch = torch.empty_like(x[:, :, :rows], dtype=acc)
    part = x.new_empty((n, c, 1, 1), dtype=acc)
    slabs = [(x[:, :, r : r + rows], scratch[:, :, : min(rows, h - r)]) for r in range(0, h, rows)]
    if x.dtype == acc:
        mean = x.sum(dim=(-2, -1), keepdim=True)
    else:
        mean = torch.zeros_like(part)
        for slab, buf in slabs:
            buf.copy_(slab)
            mean += torch.sum(buf, dim=(-2, -1), keepdim=True, out=part)
    mean /= count
    m2 = torch.zeros_like(part)
    for slab, buf in slabs:
        torch.sub(slab, mean, out=buf)
        m2 += torch.sum(buf.mul_(buf), dim=(-2, -1), keepdim=True, out=part)
    invstd = m2.div_(count).add_(INSTANCE_NORM_EPS).rsqrt_()
    return torch.addcmul(mean.mul_(invstd).neg_(), x, invstd, out=x)


class Norm(str, enum.Enum):
    """Normalisation after the resampling convolutions of the VAEs and the mapping's width changes.

    ``instance`` is the released architecture. Affine-free instance normalisation removes every
    channel's mean and scale, so a network must rebuild a photo's overall brightness and colour
    from the shape of its feature distributions: it gets there over a long GPU schedule but not in
    a few thousand CPU iterations. ``none`` keeps those statistics (the lite default weights).
    The residual blocks always use instance normalisation; their identity path carries the rest.
    """

    INSTANCE = "instance"
    NONE = "none"


def normalize(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """:func:`instance_norm` for :attr:`Norm.INSTANCE`, the identity for :attr:`Norm.NONE`."""
    return instance_norm(x) if Norm(norm) is Norm.INSTANCE else x


BORDER_CONV_MAX_WORK = 256
"""Largest ``out_channels * kh * kw`` for which :func:`reflect_conv` skips the padded copy.

Measured (``benchmarks/nonlocal_fused.py``, CPU): for the VAE head (64 -> 3, 7x7 at 512x512)
skipping the copy is 1.2-1.3x faster with one thread and even (0.95-0.99x) with two, and it never
holds a second full-size feature map; for 3x3 convolutions with 64 or more outputs the copy is
cheap next to the convolution and the four border convolutions cost more than they save (0.9x).
"""


def reflect_conv(conv: nn.Conv2d, x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection-pad ``x`` by ``pad`` on every side, then apply ``conv`` (built with ``padding=0``)."""
    if not pad:
        return conv(x)
    if _border_conv_applies(conv, x, pad):
        return _reflect_conv_by_borders(conv, x, pad)
    return conv(F.pad(x, (pad, pad, pad, pad), mode="reflect"))


def _border_conv_applies(conv: nn.Conv2d, x: torch.Tensor, pad: int) -> bool:
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    return (
        not torch.is_grad_enabled()
        and type(conv) is nn.Conv2d
        and conv.out_channels * kh * kw <= BORDER_CONV_MAX_WORK
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.padding_mode == "zeros"
        and dh * (kh - 1) == 2 * pad
        and dw * (kw - 1) == 2 * pad
        and min(x.shape[-2:]) > 2 * pad
    )


def _reflect_conv_by_borders(conv: nn.Conv2d, x: torch.Tensor, pad: int) -> torch.Tensor:
    """``conv(reflect_pad(x))`` without the padded copy of ``x``.

    A zero-padded convolution is already right everywhere except within ``pad`` of an edge; those
    four strips are recomputed from small reflect-padded slices of ``x`` and written over it.
    """
    p, (h, w) = pad, x.shape[-2:]

    def run(t: torch.Tensor, padding: int) -> torch.Tensor:
        return F.conv2d(t, conv.weight, conv.bias, 1, padding, conv.dilation, conv.groups)

    out = run(x, p)
    out[..., :p, :] = run(F.pad(x[..., : 2 * p, :], (p, p, p, 0), mode="reflect"), 0)
    out[..., h - p :, :] = run(F.pad(x[..., h - 2 * p :, :], (p, p, 0, p), mode="reflect"), 0)
    out[..., p : h - p, :p] = run(F.pad(x[..., :, : 2 * p], (p, 0, 0, 0), mode="reflect"), 0)
    out[..., p : h - p, w - p :] = run(F.pad(x[..., :, w - 2 * p :], (0, p, 0, 0), mode="reflect"), 0)
    return out


class ResidualBlock(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` with reflection padding; no activation after the sum.

    The residual block of the VAEs and mapping networks (Wan et al. 2020, §3; spec §3.3).

    Args:
        channels: input and output channels.
        dilation: dilation of the first convolution (its reflection padding grows with it).
    """

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv1 = nn.Conv2d(channels, channels, 3, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(instance_norm(reflect_conv(self.conv1, x, self.dilation)), inplace=True)
        h = instance_norm(reflect_conv(self.conv2, h, 1))
        return h.add_(x) if _inference(h) else x + h


def residual_stack(channels: int, count: int) -> nn.Sequential:
    """``count`` :class:`ResidualBlock`\\ s in sequence."""
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(count)))


OFFICIAL_RESIDUAL_KEYS = {"conv_block.1": "conv1", "conv_block.5": "conv2"}
"""Where the released checkpoints keep the two convolutions of a :class:`ResidualBlock`."""
