"""The pix2pix restoration generator: degraded RGB -> restored RGB (Isola et al. 2017).

A baseline beside the two-VAE method: one U-Net translating degraded photos straight into clean
ones, trained on the same synthetic pairs. The architecture is :class:`UNetGenerator` of the core,
registered here under its own name so a weights directory's ``pix2pix`` component loads as this
class.
"""

from __future__ import annotations

from latent_restore.core.checkpoint import register_architecture
from latent_restore.core.unet import UNetConfig, UNetGenerator


@register_architecture("pix2pix_generator", UNetConfig)
class Pix2PixGenerator(UNetGenerator):
    """U-Net ``N x 3 x H x W`` degraded -> ``N x 3 x H x W`` restored, both in [-1, 1].

    ``H`` and ``W`` must be multiples of ``2**depth``; :func:`pix2pix.inference.translate` pads
    any photo to that and crops back.

    Args:
        config: :class:`UNetConfig` (the defaults are the paper's 256x256 generator).
    """
