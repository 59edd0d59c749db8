"""Blocks shared by more than one network."""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

INSTANCE_NORM_EPS = 1e-5


def _inference(x: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and x.requires_grad)


def instance_norm(x: torch.Tensor) -> torch.Tensor:
    """Instance normalisation without affine parameters or running statistics (stores nothing).

    Callers pass a freshly computed tensor: at inference it is normalised in place, which saves a
    full copy of the feature map — the difference between fitting and not fitting a large photo.
    """
    if not _inference(x):
        return F.instance_norm(x, eps=INSTANCE_NORM_EPS)
    var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True, correction=0)
    return x.sub_(mean).div_(var.add_(INSTANCE_NORM_EPS).sqrt_())


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


def reflect_conv(conv: nn.Conv2d, x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection-pad ``x`` by ``pad`` on every side, then apply ``conv`` (built with ``padding=0``)."""
    return conv(F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x)


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
