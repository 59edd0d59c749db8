"""latent-restore: bring old photographs back to life.

Kept deliberately light: importing :mod:`latent_restore.core` from a stage package must not pull
in the pipeline, so public names are resolved lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"
