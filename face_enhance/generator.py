"""SPADE face generator (Wan et al. 2020, §3.4 "face refinement"; spec §6).

The aligned face is both the input and the spatial condition: the network starts from the face
resized to a tiny latent grid (``load_size / 32``) and, while it upsamples back to ``load_size``,
every normalisation layer re-injects the face at the current resolution through learned per-pixel
scale and shift maps (SPADE, Park et al. 2019). Coarse structure therefore comes from the
bottleneck and fine detail is steered by the (degraded) face itself.

The inference network holds plain convolution weights. The released checkpoints store their
residual convolutions with spectral normalisation; :mod:`face_enhance.convert` folds it once.
Training re-attaches it with :func:`apply_spectral_norm` and folds it back with
:func:`remove_spectral_norm` before saving.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from latent_restore.core.checkpoint import register_architecture

LEAK = 0.2
NORM_EPS = 1e-5


@dataclass
class FaceGeneratorConfig:
    """Constructor settings of :class:`FaceGenerator`; the defaults are those of the released 256 model.

    Attributes:
        load_size: side of the square output (and of the face crops it is meant for); a multiple
            of ``2**num_upsamples``. 256 for ``Setting_9_epoch_100``, 512 for ``FaceSR_512``; the two
            released files have identical shapes and differ only in this setting.
        in_channels: channels of the face image (input and SPADE condition).
        out_channels: channels of the generated face.
        base_channels: channels of the last block (``ngf``); the bottleneck has
            ``base_channels * 2**(num_upsamples - 1)``.
        spade_hidden_channels: channels of the shared SPADE embedding of the condition image.
        num_upsamples: nearest x2 steps from the latent grid to ``load_size`` (5 in the release:
            two in the middle, then one before each of the four narrowing blocks).
        residual: predict a correction added to the input face instead of the face itself (the
            output convolution starts at zero, so an untrained network returns its input). The
            released model has no such skip and must rebuild every pixel through its bottleneck;
            a small network trained briefly learns far faster as a correction. ``False`` for the
            released checkpoints.
        mirror_average: in eval mode, average the outputs for the face and for its mirror image
            (a test-time self-ensemble: faces are close to symmetric, the network's errors are
            not, so they partly cancel; twice the generator's cost). Training runs one pass.
            ``False`` for the released checkpoints.
    """

    load_size: int = 256
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    spade_hidden_channels: int = 128
    num_upsamples: int = 5
    residual: bool = False
    mirror_average: bool = False

    def __post_init__(self) -> None:
        if self.num_upsamples < 2:
            raise ValueError(f"num_upsamples must be at least 2, got {self.num_upsamples}")
        if self.load_size % 2**self.num_upsamples:
            raise ValueError(f"load_size {self.load_size} is not a multiple of {2**self.num_upsamples}")

    @property
    def latent_size(self) -> int:
        """Side of the grid the generator starts from (8 at 256, 16 at 512)."""
        return self.load_size // 2**self.num_upsamples

    def up_channels(self) -> list[int]:
        """Channels from the bottleneck down to ``base_channels`` (one entry per narrowing block + 1)."""
        top = self.num_upsamples - 1
        return [self.base_channels * 2 ** (top - i) for i in range(top + 1)]


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``BN(x) * (1 + gamma(face)) + beta(face)``.

    The batch norm has no affine parameters; the modulation maps come from the condition image
    resized (bilinear) to the size of ``x``.
    """

    def __init__(self, channels: int, cond_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False, eps=NORM_EPS)
        self.shared = nn.Conv2d(cond_channels, hidden_channels, 3, padding=1)
        self.gamma = nn.Conv2d(hidden_channels, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden_channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(cond, size=x.shape[-2:], mode="bilinear", align_corners=False)
        hidden = F.relu(self.shared(cond))
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


class SPADEResBlock(nn.Module):
    """Residual block ``in -> out`` with SPADE before each convolution (spec §6).

    The shortcut is learned (SPADE, then a 1x1 convolution without bias) only when the channel
    count changes. ``conv1``, ``conv2`` and ``shortcut_conv`` are the layers that carry spectral
    normalisation during training.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_channels: int, hidden_channels: int) -> None:
        super().__init__()
        middle = min(in_channels, out_channels)
        self.norm1 = SPADE(in_channels, cond_channels, hidden_channels)
        self.conv1 = nn.Conv2d(in_channels, middle, 3, padding=1)
        self.norm2 = SPADE(middle, cond_channels, hidden_channels)
        self.conv2 = nn.Conv2d(middle, out_channels, 3, padding=1)
        self.learned_shortcut = in_channels != out_channels
        if self.learned_shortcut:
            self.shortcut_norm = SPADE(in_channels, cond_channels, hidden_channels)
            self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_conv(self.shortcut_norm(x, cond)) if self.learned_shortcut else x
        h = self.conv1(F.leaky_relu(self.norm1(x, cond), LEAK))
        h = self.conv2(F.leaky_relu(self.norm2(h, cond), LEAK))
        return shortcut + h


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


@register_architecture("face_generator", FaceGeneratorConfig)
class FaceGenerator(nn.Module):
    """Aligned face ``N x 3 x H x W`` in [-1, 1] -> refined face ``N x 3 x S x S`` in [-1, 1], S = load_size.

    The input is only consumed through bilinear resizes, so any ``H x W`` works; the released
    pipeline feeds crops of exactly ``load_size``.
    """

    def __init__(self, config: FaceGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        chans = config.up_channels()
        cond, hidden = config.in_channels, config.spade_hidden_channels
        self.stem = nn.Conv2d(config.in_channels, chans[0], 3, padding=1)
        self.head = SPADEResBlock(chans[0], chans[0], cond, hidden)
        self.middle = nn.ModuleList(SPADEResBlock(chans[0], chans[0], cond, hidden) for _ in range(2))
        self.up = nn.ModuleList(
            SPADEResBlock(chans[i], chans[i + 1], cond, hidden) for i in range(len(chans) - 1)
        )
        self.to_rgb = nn.Conv2d(chans[-1], config.out_channels, 3, padding=1)
        if config.residual:
            if config.in_channels != config.out_channels:
                raise ValueError("a residual face generator needs as many output channels as input channels")
            nn.init.zeros_(self.to_rgb.weight)
            nn.init.zeros_(self.to_rgb.bias)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        if self.config.mirror_average and not self.training:
            return 0.5 * (self._forward(face) + self._forward(face.flip(-1)).flip(-1))
        return self._forward(face)

    def _forward(self, face: torch.Tensor) -> torch.Tensor:
        grid = self.config.latent_size
        x = self.stem(F.interpolate(face, size=(grid, grid), mode="bilinear", align_corners=False))
        x = self.head(x, face)
        x = _upsample(x)
        for block in self.middle:
            x = block(x, face)
        for block in self.up:
            x = block(_upsample(x), face)
        out = self.to_rgb(F.leaky_relu(x, LEAK))
        if not self.config.residual:
            return torch.tanh(out)
        if face.shape[-2:] != out.shape[-2:]:
            face = F.interpolate(face, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return (face + out).clamp(-1.0, 1.0)

    def spectral_norm_convs(self) -> Iterator[nn.Conv2d]:
        """The convolutions that the released model trains with spectral normalisation."""
        for block in (self.head, *self.middle, *self.up):
            yield block.conv1
            yield block.conv2
            if block.learned_shortcut:
                yield block.shortcut_conv


def apply_spectral_norm(generator: FaceGenerator) -> FaceGenerator:
    """Re-attach spectral normalisation (one power iteration per training step) for training.

    The plain weights become the unnormalised parameter. Converted weights already have a
    spectral norm of about 1, so the normalised network starts where the released one was.
    """
    for conv in generator.spectral_norm_convs():
        if not parametrize.is_parametrized(conv, "weight"):
            spectral_norm(conv)
    return generator


def remove_spectral_norm(generator: FaceGenerator) -> FaceGenerator:
    """Fold the current normalised weights into plain ones (the layout :func:`save_component` expects)."""
    for conv in generator.spectral_norm_convs():
        if parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    return generator
