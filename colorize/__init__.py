"""Optional colorization stage: a U-Net predicting Lab chroma from lightness (Zhang et al. 2016)."""

from colorize.inference import colorize
from colorize.network import Colorizer, ColorizerConfig

__all__ = ["Colorizer", "ColorizerConfig", "colorize"]
