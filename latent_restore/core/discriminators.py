"""PatchGAN discriminators used by every adversarial stage (pix2pixHD style; spec §8.3).

A discriminator returns the activations of every layer, not only its verdict: the generator's
feature-matching loss compares those activations on real and generated images, which stabilises
GAN training far more than the verdict alone.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from latent_restore.core.layers import instance_norm

LEAK = 0.2
KERNEL = 4
PADDING = math.ceil((KERNEL - 1) / 2)
MAX_CHANNELS = 512

Features = list[torch.Tensor]
"""Activations of one discriminator scale, first layer first; the last entry is the patch verdict."""


@dataclasses.dataclass
class DiscriminatorConfig:
    """Training-config view of :class:`MultiScaleDiscriminator` (input channels come from the stage).

    Attributes:
        base_channels: channels of the first layer (``ndf``), doubled per layer up to 512.
        num_layers: stride-2 layers (``n_layers_D``).
        num_scales: image pyramid levels (``num_D``); 1 for the latent discriminator.
        spectral_norm: spectral normalisation on every convolution (the scratch mappings' ``use_SN``).
    """

    base_channels: int = 64
    num_layers: int = 3
    num_scales: int = 2
    spectral_norm: bool = False


class PatchDiscriminator(nn.Module):
    """One scale: ``N x C x H x W`` -> per-layer activations, the last a ``N x 1 x h x w`` verdict map.

    Layers (all 4x4 convolutions with zero padding 2): stride-2 conv + LeakyReLU(0.2); then
    ``num_layers - 1`` times stride-2 conv + instance norm + LeakyReLU; one stride-1 conv + instance
    norm + LeakyReLU; a stride-1 conv to one channel (no activation: LSGAN regresses it).

    Args:
        in_channels: image (or latent) channels.
        base_channels: channels of the first layer.
        num_layers: stride-2 layers.
        spectral_norm: wrap every convolution in spectral normalisation.
    """

    def __init__(
        self, in_channels: int, base_channels: int = 64, num_layers: int = 3, spectral_norm: bool = False
    ) -> None:
        super().__init__()
        chans = [in_channels] + [min(base_channels * 2**i, MAX_CHANNELS) for i in range(num_layers + 1)]
        strides = [2] * num_layers + [1]
        convs = [
            nn.Conv2d(chans[i], chans[i + 1], KERNEL, stride=strides[i], padding=PADDING)
            for i in range(num_layers + 1)
        ]
        convs.append(nn.Conv2d(chans[-1], 1, KERNEL, stride=1, padding=PADDING))
        if spectral_norm:
            convs = [apply_spectral_norm(conv) for conv in convs]
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> Features:
        features = []
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < last:
                if i > 0:
                    x = instance_norm(x)
                x = F.leaky_relu(x, LEAK)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` :class:`PatchDiscriminator`\\ s on an average-pooled image pyramid.

    Scale 0 sees the input; each next scale sees it average-pooled by a 3x3 window with stride 2
    (padding 1, padded cells excluded from the average), so coarse scales judge global structure
    and fine ones texture.

    Returns:
        One :data:`Features` list per scale, full resolution first.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        num_layers: int = 3,
        num_scales: int = 2,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, base_channels, num_layers, spectral_norm)
            for _ in range(num_scales)
        )

    @classmethod
    def from_config(cls, in_channels: int, config: DiscriminatorConfig) -> MultiScaleDiscriminator:
        return cls(in_channels, **dataclasses.asdict(config))

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    def forward(self, x: torch.Tensor) -> list[Features]:
        outputs = []
        for i, scale in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return outputs


def split_batch(outputs: list[Features], sizes: list[int]) -> list[list[Features]]:
    """Split the outputs of one forward on a concatenated batch back into its parts.

    Running real and fake samples through the discriminator as one batch is a single DDP forward
    (two forwards before one backward are not allowed); instance norm is per sample, so the
    results equal separate forwards.

    Returns:
        One ``list[Features]`` per part, in the order of ``sizes``.
    """
    parts: list[list[Features]] = [[] for _ in sizes]
    for features in outputs:
        pieces = [f.split(sizes, dim=0) for f in features]
        for k in range(len(sizes)):
            parts[k].append([p[k] for p in pieces])
    return parts
