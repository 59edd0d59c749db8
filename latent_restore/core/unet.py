"""The pix2pix U-Net generator (Isola et al. 2017, "Image-to-Image Translation with Conditional
Adversarial Networks", §3.2.1 and appendix 6.1.1), shared by the pix2pix restoration baseline and
the colorization stage.

Encoder ``C64-C128-C256-C512-C512-C512-C512-C512``: 4x4 convolutions with stride 2, each followed by
BatchNorm (not after the first) and LeakyReLU(0.2). The decoder mirrors it with 4x4 transposed
convolutions, BatchNorm and ReLU; its first three blocks have dropout 0.5 (the paper's ``CD`` blocks,
its only source of noise). Skip connections concatenate encoder layer ``i`` with decoder layer
``n - i``, so low-level structure such as edges is shuttled straight across the bottleneck — what
makes a U-Net suit restoration and colorization, where input and output share their layout. A last
transposed convolution and ``tanh`` map to the output channels.

Following the paper's pre-activation layout, each block applies its activation to its *input*:
encoder ``LeakyReLU -> conv -> BatchNorm`` (the first block is a bare convolution), decoder
``ReLU -> transposed conv -> BatchNorm -> dropout``. The network takes sides that are multiples of
``2**depth`` only; the inference helpers pad to that multiple and crop back (never inside the
network). With the full depth of 8 a 256x256 input reaches a 1x1 bottleneck, whose BatchNorm needs
more than one sample per training batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2
KERNEL = 4


@dataclass
class UNetConfig:
    """Settings of :class:`UNetGenerator`; the defaults are the paper's 256x256 generator.

    Attributes:
        in_channels: input channels (3 for RGB restoration, 1 for the L channel of colorization).
        out_channels: output channels (3 for RGB, 2 for the ab chroma channels).
        base_channels: channels of the first encoder layer (``ngf``), doubled per level.
        max_channels: cap on the channels of any layer (512 in the paper).
        depth: stride-2 levels (8 in the paper); sides must be multiples of ``2**depth``.
        num_dropout: how many of the innermost decoder blocks have dropout (3 in the paper).
        dropout: dropout probability of those blocks.
    """

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    depth: int = 8
    num_dropout: int = 3
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"a U-Net needs depth >= 2, got {self.depth}")

    @property
    def multiple(self) -> int:
        """What image sides must be a multiple of."""
        return 2**self.depth

    def encoder_channels(self) -> list[int]:
        """Output channels of the encoder layers, outermost first (``[64, 128, 256, 512, ...]``)."""
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.depth)]


class DownBlock(nn.Module):
    """``[LeakyReLU(0.2)] -> conv 4x4 stride 2 -> [BatchNorm]`` (bracketed: not in the first block)."""

    def __init__(self, in_channels: int, out_channels: int, outermost: bool) -> None:
        super().__init__()
        self.outermost = outermost
        self.conv = nn.Conv2d(in_channels, out_channels, KERNEL, stride=2, padding=1, bias=outermost)
        self.norm = None if outermost else nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.outermost:
            x = F.leaky_relu(x, LEAK)
        x = self.conv(x)
        return x if self.norm is None else self.norm(x)


class UpBlock(nn.Module):
    """``ReLU -> transposed conv 4x4 stride 2 -> BatchNorm -> [Dropout]``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, KERNEL, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(F.relu(x)))
        return x if self.dropout is None else self.dropout(x)


class UNetGenerator(nn.Module):
    """U-Net with skips: ``N x in_channels x H x W`` in [-1, 1] -> ``N x out_channels x H x W`` in [-1, 1].

    Submodules: ``down`` (``depth`` :class:`DownBlock`\\ s, outermost first), ``up`` (``depth - 1``
    :class:`UpBlock`\\ s, innermost first) and ``head`` (the outermost transposed convolution).

    Args:
        config: channels, depth and dropout.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        chans = config.encoder_channels()
        ins = [config.in_channels, *chans[:-1]]
        self.down = nn.ModuleList(DownBlock(ins[i], chans[i], outermost=i == 0) for i in range(config.depth))
        ups = []
        for k, level in enumerate(reversed(range(config.depth - 1))):
            # Decoder block k receives the innermost code (k = 0) or the previous decoder output
            # concatenated with the encoder output of the same resolution.
            in_channels = chans[-1] if k == 0 else 2 * chans[level + 1]
            dropout = config.dropout if k < config.num_dropout else 0.0
            ups.append(UpBlock(in_channels, chans[level], dropout))
        self.up = nn.ModuleList(ups)
        self.head = nn.ConvTranspose2d(2 * chans[0], config.out_channels, KERNEL, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"{type(self).__name__} needs sides that are multiples of {m}, got {tuple(x.shape[-2:])}"
            )
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the innermost code feeds the first decoder block directly
        for block in self.up:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return torch.tanh(self.head(F.relu(x)))
