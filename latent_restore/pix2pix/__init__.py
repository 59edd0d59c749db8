"""pix2pix restoration baseline (Isola et al. 2017): a U-Net generator trained on synthetic pairs."""

from pix2pix.generator import Pix2PixGenerator
from pix2pix.inference import translate

__all__ = ["Pix2PixGenerator", "translate"]
