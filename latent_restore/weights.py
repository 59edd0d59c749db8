"""The weights directory: one sub-directory per component, each in our checkpoint format.

``latent-restore convert`` writes it from the released checkpoints, the training scripts write it
at the end of a run, and the pipeline reads it. Missing components are fine as long as the mode
that needs them is not used.
"""

from __future__ import annotations

from pathlib import Path

# Importing the networks registers their architectures, so any component directory loads.
import colorize.network  # noqa: F401
import face_enhance.generator  # noqa: F401
import pix2pix.generator  # noqa: F401
import stage1_vae  # noqa: F401
import stage2_mapping  # noqa: F401
from latent_restore.core.components import Component

__all__ = ["DEFAULT_WEIGHTS_DIR", "Component", "default_weights_dir"]


DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "default_weights"
"""Built-in weights shipped with the package (used when ``--weights`` is not given)."""


def default_weights_dir() -> Path | None:
    """The built-in weights directory, or None when this installation has none."""
    return (
        DEFAULT_WEIGHTS_DIR
        if (DEFAULT_WEIGHTS_DIR / Component.VAE_A.value / "config.json").is_file()
        else None
    )
