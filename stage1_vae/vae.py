"""The VAE of both domains (Wan et al. 2020, §3.1; spec §3.4).

One class serves VAE A (old photos: real ones and synthetically degraded clean ones) and VAE B
(clean photos); they differ only in their weights. The latent code keeps a spatial layout
(``latent_channels x H/2^d x W/2^d``) so the mapping network of stage 2 can translate it locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core.checkpoint import register_architecture
from latent_restore.core.layers import Norm, normalize, reflect_conv, residual_stack


@dataclass
class VAEConfig:
    """Constructor settings of :class:`VAE`; the defaults are those of the released checkpoints.

    Attributes:
        in_channels: image channels in.
        out_channels: image channels out.
        base_channels: channels after the 7x7 stem; each downsampling doubles them up to
            ``latent_channels``.
        latent_channels: channels of the latent code.
        num_downsamples: stride-2 stages; the latent is ``H / 2**num_downsamples``.
        num_res_blocks: residual blocks at latent resolution in the encoder and in the decoder.
        norm: normalisation after the stem and the down/up-sampling convolutions (released:
            instance; see :class:`~latent_restore.core.layers.Norm`).
    """

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    latent_channels: int = 64
    num_downsamples: int = 2
    num_res_blocks: int = 4
    norm: Norm = Norm.INSTANCE

    def __post_init__(self) -> None:
        self.norm = Norm(self.norm)

    def stage_channels(self) -> list[int]:
        """Channels at each resolution, full resolution first, latent last."""
        chans = [min(self.base_channels * 2**i, self.latent_channels) for i in range(self.num_downsamples)]
        return [*chans, self.latent_channels]

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this to come out at the size they went in."""
        return 2**self.num_downsamples


class VAEEncoder(nn.Module):
    """Image (N x in x H x W, range [-1, 1]) -> latent (N x latent x H/m x W/m), m = 2**num_downsamples."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        chans = config.stage_channels()
        self.stem = nn.Conv2d(config.in_channels, chans[0], 7)
        self.down = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 4, stride=2, padding=1) for i in range(config.num_downsamples)
        )
        self.norm = config.norm
        self.blocks = residual_stack(config.latent_channels, config.num_res_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(normalize(reflect_conv(self.stem, x, 3), self.norm), inplace=True)
        for conv in self.down:
            h = F.relu(normalize(conv(h), self.norm), inplace=True)
        return self.blocks(h)


class VAEDecoder(nn.Module):
    """Latent (N x latent x h x w) -> image (N x out x h*m x w*m) in [-1, 1]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        chans = config.stage_channels()
        self.norm = config.norm
        self.blocks = residual_stack(config.latent_channels, config.num_res_blocks)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 4, stride=2, padding=1)
            for i in reversed(range(config.num_downsamples))
        )
        self.head = nn.Conv2d(chans[0], config.out_channels, 7)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(z)
        for conv in self.up:
            h = F.relu(normalize(conv(h), self.norm), inplace=True)
        return torch.tanh(reflect_conv(self.head, h, 3))


@register_architecture("vae", VAEConfig)
class VAE(nn.Module):
    """Encoder + decoder of one domain.

    At test time only VAE A's encoder and VAE B's decoder run. During training the decoder sees the
    latent plus unit-variance Gaussian noise (the training loop adds it), which with the KL term
    ``mean(z**2)`` makes the latent space smooth (spec §8.3).
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VAEEncoder(config)
        self.decoder = VAEDecoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction ``decode(encode(x))``."""
        return self.decoder(self.encoder(x))
