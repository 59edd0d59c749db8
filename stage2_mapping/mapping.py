"""Latent mapping networks: VAE-A latents -> VAE-B latents (Wan et al. 2020, §3.2; spec §3.5–3.7).

Three variants share the same widening/narrowing convolution trunk:

* :class:`MappingNetwork` — plain residual mapping (unstructured degradations, "quality" mode);
* :class:`NonLocalMappingNetwork` — adds the partial non-local block, so scratched regions are
  filled from undamaged context anywhere in the photo ("scratch" mode);
* :class:`PatchAttentionMappingNetwork` — multi-scale patch attention whose cost does not grow
  with the square of the pixel count, for high-resolution scratched photos ("HR" mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core.checkpoint import register_architecture
from latent_restore.core.imaging import HR_MASK_DILATION, HoleFill
from latent_restore.core.layers import Norm, normalize, residual_stack
from stage2_mapping.hole_fusion import HoleFusion
from stage2_mapping.nonlocal_block import PartialNonLocalBlock
from stage2_mapping.patch_attention import PatchAttention


@dataclass
class MappingConfig:
    """Settings of the plain mapping network (defaults: the released checkpoints).

    Attributes:
        latent_channels: channels of the VAE latents (in and out).
        base_channels: the trunk widens through ``min(base_channels * 2**i, max_channels)`` for
            ``i = 1..num_levels``.
        max_channels: width of the trunk at its widest (``map_mc`` in the paper's code).
        num_levels: widening convolutions (and, mirrored, narrowing ones).
        num_blocks: residual blocks at full width.
        norm: normalisation after the widening and narrowing convolutions (released: instance;
            see :class:`~latent_restore.core.layers.Norm`).
        global_context: modulate the widest features by the whole input's statistics
            (:class:`GlobalContext`) before narrowing. Off in the released networks, which see
            enough of the photo through four widening levels; a lite mapping's receptive field
            is a few dozen pixels, too small to tell a faded or tinted photo from a pale one.
    """

    latent_channels: int = 64
    base_channels: int = 64
    max_channels: int = 512
    num_levels: int = 4
    num_blocks: int = 6
    norm: Norm = Norm.INSTANCE
    global_context: bool = False

    def __post_init__(self) -> None:
        self.norm = Norm(self.norm)

    def widths(self) -> list[int]:
        return [self.latent_channels] + [
            min(self.base_channels * 2**i, self.max_channels) for i in range(1, self.num_levels + 1)
        ]


@dataclass
class HoleMappingConfig(MappingConfig):
    """A mapping that fills holes: how it was trained to see and fill them.

    These are properties of the trained weights, so they travel in their config: the pipeline
    prepares a photo's holes exactly as the mapping's training prepared the synthetic ones.

    Attributes:
        hole_fill: how the defect mask is filled before VAE A encodes the photo
            (:class:`~latent_restore.core.imaging.HoleFill`; released: white).
        hole_dilation: times the mask is dilated by a 3x3 square first (released: none for the
            non-local mapping, :data:`~latent_restore.core.imaging.HR_MASK_DILATION` for patch
            attention).
        hole_fusion: how the attention's result enters the hole cells
            (:class:`~stage2_mapping.hole_fusion.HoleFusion`; released: replace).
    """

    hole_fill: HoleFill = HoleFill.WHITE
    hole_dilation: int = 0
    hole_fusion: HoleFusion = HoleFusion.REPLACE

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hole_fill = HoleFill(self.hole_fill)
        self.hole_fusion = HoleFusion(self.hole_fusion)
        if self.hole_dilation < 0:
            raise ValueError(f"hole_dilation must be 0 or more, got {self.hole_dilation}")


@dataclass
class NonLocalMappingConfig(HoleMappingConfig):
    """Adds the partial non-local block's residual refinement (three blocks when released)."""

    nonlocal_res_blocks: int = 3


@dataclass
class PatchAttentionMappingConfig(HoleMappingConfig):
    """Multi-scale patch attention; ``num_blocks`` is unused here (blocks sit between the scales).

    Attributes:
        patch_sizes: latent tile side of each attention scale, coarse to fine.
        pre_blocks: residual blocks before the first attention scale.
        inter_blocks: residual blocks between two attention scales.
        post_blocks: residual blocks after the last attention scale.
    """

    hole_dilation: int = HR_MASK_DILATION
    patch_sizes: tuple[int, ...] = (8, 4, 2)
    pre_blocks: int = 2
    inter_blocks: int = 2
    post_blocks: int = 2


class GlobalContext(nn.Module):
    """Per-channel scale and shift of a feature map from its global mean and standard deviation.

    Fading, tints and lost contrast act on the whole photo; their correction depends on statistics
    no convolution of a small receptive field can see. A two-layer perceptron maps each channel's
    mean and deviation over the map to ``x * (1 + scale) + shift``; its last layer starts at zero,
    so a network warm-started from one without this module begins with the same output.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(2 * channels, channels)
        self.film = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std, mean = torch.std_mean(x, dim=(2, 3), correction=0)
        scale, shift = self.film(F.relu(self.hidden(torch.cat([mean, std], 1)))).chunk(2, dim=1)
        return x * (1 + scale[..., None, None]) + shift[..., None, None]


def _global_context(config: MappingConfig) -> nn.Module:
    return GlobalContext(config.widths()[-1]) if config.global_context else nn.Identity()


def _expansion(config: MappingConfig) -> nn.ModuleList:
    w = config.widths()
    return nn.ModuleList(nn.Conv2d(w[i], w[i + 1], 3, padding=1) for i in range(config.num_levels))


def _contraction(config: MappingConfig) -> nn.ModuleList:
    w = config.widths()
    return nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 3, padding=1) for i in range(config.num_levels - 1, 0, -1))


def _conv_in_relu(convs: nn.ModuleList, x: torch.Tensor, norm: Norm = Norm.INSTANCE) -> torch.Tensor:
    for conv in convs:
        x = F.relu(normalize(conv(x), norm), inplace=True)
    return x


def _output_conv(config: MappingConfig) -> nn.Conv2d:
    return nn.Conv2d(config.widths()[1], config.latent_channels, 3, padding=1)


@register_architecture("mapping", MappingConfig)
class MappingNetwork(nn.Module):
    """Plain mapping: widen, residual blocks, narrow. Latent ``N x C x h x w`` in and out."""

    def __init__(self, config: MappingConfig) -> None:
        super().__init__()
        self.config = config
        self.expand = _expansion(config)
        self.blocks = residual_stack(config.widths()[-1], config.num_blocks)
        self.context = _global_context(config)
        self.contract = _contraction(config)
        self.out = _output_conv(config)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` is accepted for a uniform interface and ignored."""
        h = self.context(self.blocks(_conv_in_relu(self.expand, z, self.config.norm)))
        return self.out(_conv_in_relu(self.contract, h, self.config.norm))


@register_architecture("mapping_nonlocal", NonLocalMappingConfig)
class NonLocalMappingNetwork(nn.Module):
    """Mapping with the partial non-local block between the widening convs and the residual blocks."""

    def __init__(self, config: NonLocalMappingConfig) -> None:
        super().__init__()
        self.config = config
        width = config.widths()[-1]
        self.expand = _expansion(config)
        self.nonlocal_block = PartialNonLocalBlock(width, config.nonlocal_res_blocks, config.hole_fusion)
        self.blocks = residual_stack(width, config.num_blocks)
        self.context = _global_context(config)
        self.contract = _contraction(config)
        self.out = _output_conv(config)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: z latent ``N x C x h x w``; mask ``N x 1 x H x W`` at image resolution, 1 = scratch."""
        h = self.nonlocal_block(_conv_in_relu(self.expand, z, self.config.norm), mask)
        h = self.context(self.blocks(h))
        return self.out(_conv_in_relu(self.contract, h, self.config.norm))


@register_architecture("mapping_patch_attention", PatchAttentionMappingConfig)
class PatchAttentionMappingNetwork(nn.Module):
    """Mapping with patch attention at several tile sizes (the HR variant)."""

    def __init__(self, config: PatchAttentionMappingConfig) -> None:
        super().__init__()
        self.config = config
        width = config.widths()[-1]
        self.expand = _expansion(config)
        self.pre_blocks = residual_stack(width, config.pre_blocks)
        self.attention = nn.ModuleList(
            PatchAttention(width, p, config.hole_fusion) for p in config.patch_sizes
        )
        self.inter_blocks = nn.ModuleList(
            residual_stack(width, config.inter_blocks) for _ in range(len(config.patch_sizes) - 1)
        )
        self.post_blocks = residual_stack(width, config.post_blocks)
        self.context = _global_context(config)
        self.contract = _contraction(config)
        self.out = _output_conv(config)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: z latent ``N x C x h x w``; mask ``N x 1 x H x W`` at image resolution, 1 = scratch."""
        h = self.pre_blocks(_conv_in_relu(self.expand, z, self.config.norm))
        for i, attention in enumerate(self.attention):
            if i > 0:
                h = self.inter_blocks[i - 1](h)
            h = attention(h, mask)
        h = self.context(self.post_blocks(h))
        return self.out(_conv_in_relu(self.contract, h, self.config.norm))
