"""Optional colorization stage: a U-Net predicting Lab chroma from lightness (Zhang et al. 2016)."""

from latent_restore.colorize.inference import colorize
from latent_restore.colorize.network import Colorizer, ColorizerConfig

__all__ = ["Colorizer", "ColorizerConfig", "colorize"]
