"""Face enhancement stage: dlib detection and 5-point alignment, SPADE face generator, warp-back.

Public names are resolved lazily so that importing :mod:`face_enhance.convert` (which the
checkpoint converter does) does not load dlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaceGenerator": "face_enhance.generator",
    "FaceGeneratorConfig": "face_enhance.generator",
    "apply_spectral_norm": "face_enhance.generator",
    "remove_spectral_norm": "face_enhance.generator",
    "DetectorConfig": "face_enhance.detection",
    "DetectedFace": "face_enhance.detection",
    "FaceDetector": "face_enhance.detection",
    "OFFICIAL_DETECTOR": "face_enhance.detection",
    "FaceEnhancer": "face_enhance.enhancer",
    "FaceEnhancerConfig": "face_enhance.enhancer",
    "FaceEnhanceResult": "face_enhance.enhancer",
    "face_generator_from_official": "face_enhance.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'face_enhance' has no attribute {name!r}")
