"""Names of the components of a weights directory.

Its own module, free of heavy imports, so that stage packages (which import only
:mod:`latent_restore.core`) can name the components they write; :mod:`latent_restore.weights`
re-exports it.
"""

from __future__ import annotations

import enum


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
