"""Scratch-detection U-Net with blur-pool antialiasing (TPAMI 2022 §3.4; spec §4).

Predicts per-pixel logits of structured defects (scratches, cracks, dust, stains) from a grayscale
photo (the released detector) or an RGB one;
``sigmoid(logits) >= threshold`` gives the mask that the partial non-local block fills in.
Downsampling is "blur then subsample" (Zhang 2019, antialiased CNNs), so the mask does not
flicker when the photo shifts by a pixel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core.checkpoint import register_architecture
from latent_restore.core.layers import reflect_conv

LEAK = 0.2


def binomial_filter(channels: int) -> torch.Tensor:
    """The 3x3 binomial blur ``[1,2,1]^T [1,2,1] / 16``, one copy per channel (``C x 1 x 3 x 3``)."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    kernel = torch.outer(taps, taps)
    return (kernel / kernel.sum()).to(torch.float32).expand(channels, 1, 3, 3).clone()


class BlurPool(nn.Module):
    """Reflection-pad 1, depthwise binomial blur, stride 2: ``n -> ceil(n / 2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", binomial_filter(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ConvBlock(nn.Module):
    """Two ``[reflect-pad 1, conv3, BatchNorm, LeakyReLU(0.2)]`` layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3)
        self.norm2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(reflect_conv(self.conv1, x, 1)), LEAK)
        return F.leaky_relu(self.norm2(reflect_conv(self.conv2, x, 1)), LEAK)


class DownLevel(nn.Module):
    """Convolution, blur-pool to half size, then a :class:`ConvBlock` that doubles the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce_conv = nn.Conv2d(channels, channels, 3)
        self.reduce_norm = nn.BatchNorm2d(channels)
        self.blur = BlurPool(channels)
        self.block = ConvBlock(channels, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.reduce_norm(reflect_conv(self.reduce_conv, x, 1)), LEAK)
        return self.block(self.blur(x))


class UpLevel(nn.Module):
    """Bilinear x2 and a convolution, concatenation with the skip, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up_conv = nn.Conv2d(in_channels, out_channels, 3)
        self.block = ConvBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = reflect_conv(self.up_conv, x, 1)
        dy = (skip.shape[-2] - x.shape[-2]) // 2
        dx = (skip.shape[-1] - x.shape[-1]) // 2
        skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
        return self.block(torch.cat([x, skip], dim=1))


@dataclass
class ScratchDetectorConfig:
    """Settings of :class:`ScratchDetector`; the defaults are those of the released checkpoint.

    Attributes:
        in_channels: 1 (grayscale photos, released) or 3 (RGB photos: the defects' colour, such
            as a stain's brown tint, is visible, where luma shows only its lightness).
        out_channels: 1 (scratch logit).
        base_channels: channels after the stem; doubled at every level.
        depth: number of blur-pool levels; image sides must be multiples of ``2**depth``.
        threshold: probability from which a pixel counts as a defect. 0.4 is the released value;
            a detector trained with another loss has its own best value, which calibration finds
            on photos it never saw (``scripts/calibrate_detector.py``) and stores here, so it
            travels with the weights. Inference only: no tensor depends on it.
    """

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 64
    depth: int = 4
    threshold: float = 0.4

    @property
    def multiple(self) -> int:
        return 2**self.depth


@register_architecture("scratch_detector", ScratchDetectorConfig)
class ScratchDetector(nn.Module):
    """U-Net: photo ``N x in_channels x H x W`` in [-1, 1] -> logits ``N x 1 x H x W``.

    ``H`` and ``W`` must be multiples of ``2**depth`` (the pipeline pads to that).
    """

    def __init__(self, config: ScratchDetectorConfig) -> None:
        super().__init__()
        self.config = config
        chans = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.stem = nn.Conv2d(config.in_channels, chans[0], 7)
        self.down = nn.ModuleList(DownLevel(chans[i]) for i in range(config.depth))
        self.up = nn.ModuleList(UpLevel(chans[i + 1], chans[i]) for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(chans[0], config.out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"ScratchDetector needs sides that are multiples of {m}, got {tuple(x.shape[-2:])}"
            )
        x = F.leaky_relu(reflect_conv(self.stem, x, 3), LEAK)
        skips = []
        for level in self.down:
            skips.append(x)
            x = level(x)
        for level, skip in zip(self.up, reversed(skips), strict=True):
            x = level(x, skip)
        return reflect_conv(self.head, x, 1)


def rgb_detector_from_gray(detector: ScratchDetector, luma_weights: Sequence[float]) -> ScratchDetector:
    """A three-channel copy of a grayscale ``detector`` that gives the same logits on RGB input.

    The stem's one input filter is split over R, G and B in the proportions of ``luma_weights``
    (which sum to 1, so ``2 * luma - 1`` is the same mix of ``2 * rgb - 1``). A colour detector
    then starts from everything the gray one learned instead of from scratch, and training only
    has to teach it what the colour adds.
    """
    if detector.config.in_channels != 1:
        raise ValueError(f"expected a grayscale detector, got in_channels={detector.config.in_channels}")
    mix = torch.as_tensor(list(luma_weights), dtype=detector.stem.weight.dtype)
    if mix.shape != (3,) or abs(float(mix.sum()) - 1.0) > 1e-4:
        raise ValueError(f"luma_weights must be three weights summing to 1, got {list(luma_weights)}")
    rgb = ScratchDetector(dataclasses.replace(detector.config, in_channels=3))
    state = detector.state_dict()
    state["stem.weight"] = state["stem.weight"] * mix.view(1, 3, 1, 1)
    rgb.load_state_dict(state)
    return rgb.train(detector.training)
