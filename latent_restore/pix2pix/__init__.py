"""pix2pix restoration baseline (Isola et al. 2017): a U-Net generator trained on synthetic pairs."""

from latent_restore.pix2pix.generator import Pix2PixGenerator
from latent_restore.pix2pix.inference import translate

__all__ = ["Pix2PixGenerator", "translate"]
