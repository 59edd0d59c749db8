"""The weights directory: one sub-directory per component, each in our checkpoint format.

``latent-restore convert`` writes it from the released checkpoints, the training scripts write it
at the end of a run, and the pipeline reads it. Missing components are fine as long as the mode
that needs them is not used.
"""

from __future__ import annotations

import enum
from pathlib import Path

# Importing the networks registers their architectures, so any component directory loads.
import colorize.network  # noqa: F401
import face_enhance.generator  # noqa: F401
import pix2pix.generator  # noqa: F401
import stage1_vae  # noqa: F401
import stage2_mapping  # noqa: F401


class Component(str, enum.Enum):
    """Names of the component directories inside a weights directory."""

    VAE_A = "vae_a"
    """VAE of old photos; its encoder runs in every mode."""
    VAE_B_QUALITY = "vae_b_quality"
    """VAE of clean photos paired with the plain mapping; its decoder runs in quality mode."""
    VAE_B_SCRATCH = "vae_b_scratch"
    """VAE of clean photos paired with the scratch mappings; decoder for scratch and HR modes."""
    MAPPING_QUALITY = "mapping_quality"
    MAPPING_SCRATCH = "mapping_scratch"
    MAPPING_HR = "mapping_hr"
    SCRATCH_DETECTOR = "scratch_detector"
    FACE_256 = "face_256"
    FACE_512 = "face_512"
    PIX2PIX = "pix2pix"
    """pix2pix U-Net restoring the whole photo in one pass (``--model pix2pix``, a baseline)."""
    COLORIZE = "colorize"
    """L -> ab U-Net of the optional colorization stage (``--colorize``)."""


DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "default_weights"
"""Built-in weights shipped with the package (used when ``--weights`` is not given)."""


def default_weights_dir() -> Path | None:
    """The built-in weights directory, or None when this installation has none."""
    return (
        DEFAULT_WEIGHTS_DIR
        if (DEFAULT_WEIGHTS_DIR / Component.VAE_A.value / "config.json").is_file()
        else None
    )
