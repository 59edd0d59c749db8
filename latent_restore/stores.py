"""Where the pipeline's networks come from: a weights directory loaded lazily, once per component,
and the face stage built over it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latent_restore.core.checkpoint import load_component
from latent_restore.options import WeightsNotFoundError
from latent_restore.weights import Component

logger = logging.getLogger(__name__)


class ComponentStore:
    """Loads each component of a weights directory at most once, on first use."""

    def __init__(self, weights_dir: str | os.PathLike[str], device: torch.device, dtype: torch.dtype) -> None:
        self.weights_dir = Path(weights_dir)
        self.device = device
        self.dtype = dtype
        self._loaded: dict[Component, nn.Module] = {}
        self._identities: dict[Component, str] = {}

    def available(self, component: Component) -> bool:
        return component in self._loaded or (self.weights_dir / component.value / "config.json").is_file()

    def identity(self, component: Component) -> str:
        """SHA-256 of the component's files: what a restored photo's record names its weights by."""
        if component not in self._identities:
            digest = hashlib.sha256()
            for name in ("config.json", "model.safetensors"):
                path = self.weights_dir / component.value / name
                digest.update(name.encode())
                with open(path, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
            self._identities[component] = digest.hexdigest()
        return self._identities[component]

    def get(self, component: Component) -> nn.Module:
        if component not in self._loaded:
            path = self.weights_dir / component.value
            if not (path / "config.json").is_file():
                raise WeightsNotFoundError(f"{self.weights_dir} has no {component.value} component")
            logger.info("loading %s", path)
            model = load_component(path, map_location=self.device).to(self.dtype)
            # Channels-last lets oneDNN/cuDNN convolve without re-laying-out each feature map, which
            # saves one full-size copy per convolution on large photos.
            self._loaded[component] = model.to(memory_format=torch.channels_last)
        return self._loaded[component]


MAX_FACE_UPSCALE = 2.0
"""Faces more than this many photo pixels per generator pixel are left alone (the ``official``
preset enhances every face, as the released scripts do); see
:attr:`face_enhance.enhancer.FaceEnhancerConfig.max_upscale`."""


class FaceStage:
    """Face enhancement over a component store, built on first use.

    ``size`` picks the 256 or 512 generator (:meth:`RestorationOptions.resolved_face_size`); when
    only the other one is present it is used. The ``official`` preset uses the released detector
    settings (no upsampling), the default finds smaller faces.
    """

    def __init__(self, store: ComponentStore) -> None:
        self.store = store
        self._enhancers: dict[tuple[Component, bool], object] = {}

    def available(self) -> bool:
        return self.store.available(Component.FACE_256) or self.store.available(Component.FACE_512)

    def component(self, size: int = 256) -> Component:
        """The face component serving ``size`` (the other size when only that one is present)."""
        preferred = (
            [Component.FACE_512, Component.FACE_256]
            if size == 512
            else [Component.FACE_256, Component.FACE_512]
        )
        return next(c for c in preferred if self.store.available(c))

    def __call__(
        self, image: np.ndarray, size: int = 256, official_detector: bool = False
    ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        from face_enhance.detection import OFFICIAL_DETECTOR, DetectorConfig
        from face_enhance.enhancer import FaceEnhancer, FaceEnhancerConfig

        component = self.component(size)
        key = (component, official_detector)
        if key not in self._enhancers:
            detector = OFFICIAL_DETECTOR if official_detector else DetectorConfig()
            batch = 1 if component is Component.FACE_512 else 4
            upscale = None if official_detector else MAX_FACE_UPSCALE
            config = FaceEnhancerConfig(detector=detector, batch_size=batch, max_upscale=upscale)
            self._enhancers[key] = FaceEnhancer(self.store.get(component), config)
        result = self._enhancers[key](image)
        return result.image, [tuple(int(v) for v in box) for box in result.boxes]
