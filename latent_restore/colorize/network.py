"""The colorization network: lightness L -> chroma ab, a pix2pix U-Net (Isola et al. 2017 §4.8).

Predicting only the two chroma channels from the lightness (Zhang et al. 2016) means the network
cannot alter the photo's tones; the U-Net's skip connections carry the edges of L straight to the
output, so colours stay inside object boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latent_restore.core.checkpoint import register_architecture
from latent_restore.core.unet import UNetConfig, UNetGenerator


@dataclass
class ColorizerConfig(UNetConfig):
    """:class:`UNetConfig` with one input channel (normalised L) and two outputs (normalised ab).

    Attributes:
        chroma_scale: factor applied to the predicted ab. A per-pixel regression of ambiguous
            colours is right on average but often wrong in hue, and a wrong hue costs more than no
            colour; shrinking the chroma towards gray by the factor that minimises CIEDE2000 on
            photos the network did not train on (``scripts/calibrate_colorizer.py``) is the
            classical shrinkage answer. 1.0 leaves the prediction as trained.
    """

    in_channels: int = 1
    out_channels: int = 2
    chroma_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.in_channels != 1 or self.out_channels != 2:
            raise ValueError("a Colorizer maps L (1 channel) to ab (2 channels)")
        if not 0.0 <= self.chroma_scale <= 2.0:
            raise ValueError(f"chroma_scale must be in [0, 2], got {self.chroma_scale}")


@register_architecture("colorizer", ColorizerConfig)
class Colorizer(UNetGenerator):
    """U-Net ``N x 1 x H x W`` normalised L -> ``N x 2 x H x W`` normalised ab.

    The normalisation is :mod:`latent_restore.colorize.lab`'s. ``H`` and ``W`` must be multiples of
    ``2**depth``; :func:`latent_restore.colorize.inference.colorize` pads.

    Args:
        config: :class:`ColorizerConfig`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ab = super().forward(x)
        scale = self.config.chroma_scale
        return ab if scale == 1.0 else ab * scale
