"""latent-restore: bring old photographs back to life.

Kept deliberately light: importing :mod:`latent_restore.core` from a stage package must not pull
in the pipeline, so the public names below are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RestorationPipeline": "latent_restore.pipeline",
    "RestorationOptions": "latent_restore.pipeline",
    "RestorationResult": "latent_restore.pipeline",
    "read_photo": "latent_restore.core.imaging",
    "convert_official": "latent_restore.convert",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latent_restore' has no attribute {name!r}")
