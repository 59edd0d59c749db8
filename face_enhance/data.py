"""Training pairs of the face enhancement network: aligned face crops and their degraded copies.

The face network restores faces after the global stage (CVPR 2020 §3.4, TPAMI 2022 §3.5); it is
trained on aligned face crops degraded with the same synthetic pipeline (the released repository
has inference code only, spec §8). Crops are assumed aligned already (e.g. FFHQ-style); a
non-square image is centre-cropped to a square before resizing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from latent_restore.core.data import (
    ImagePool,
    SeededDataset,
    center_square_resize,
    epoch_file_index,
    image_to_tensor,
    random_grayscale,
    random_hflip,
)
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects
from latent_restore.core.degradations.sampler import (
    ColourConfig,
    HalftoneConfig,
    TextureConfig,
    ToneConfig,
    VignetteConfig,
)


def face_degradation() -> DegradationConfig:
    """The part of the degradation mix that is left on a face when the face stage sees it.

    Faces are enhanced after the global stage, which has already corrected the photo's tone,
    colour cast, vignetting, paper texture and halftone screen; what remains on a face is loss of
    detail: blur, noise, film grain, resampling and JPEG (CVPR 2020 §3.4). Training and
    ``latent-restore eval --faces`` use this mix.
    """
    return DegradationConfig(
        tone=ToneConfig(prob=0.0),
        colour=ColourConfig(prob=0.0),
        vignette=VignetteConfig(prob=0.0),
        texture=TextureConfig(prob=0.0),
        halftone=HalftoneConfig(prob=0.0),
    )


class FacePairDataset(SeededDataset):
    """(degraded, clean) pairs of aligned faces at ``size x size``.

    Args:
        face_dirs: folder(s) of aligned face crops.
        size: output side ``S`` (faces are resized, not cropped, so alignment is kept).
        degradation: degradation ranges (default :func:`face_degradation`).
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of images.
        with_scratches: keep the degradation's defect stage (off by default: the global stage
            removes structured defects before faces are enhanced).
        grayscale_prob: probability of a grayscale pair.
        cache: keep decoded (resized) faces in memory.

    Items: ``{"degraded", "clean": 3 x S x S float32 in [-1, 1]}``.
    """

    def __init__(
        self,
        face_dirs: str | Path | Iterable[str | Path],
        size: int = 256,
        degradation: DegradationConfig | None = None,
        seed: int = 0,
        length: int | None = None,
        with_scratches: bool = False,
        grayscale_prob: float = 0.1,
        cache: bool = False,
    ) -> None:
        self.pool = ImagePool(face_dirs, cache=False)
        if not len(self.pool):
            raise FileNotFoundError(f"no images found in {face_dirs}")
        super().__init__(seed, length if length is not None else len(self.pool))
        self.size = size
        self.grayscale_prob = grayscale_prob
        self.cache = cache
        self._faces: dict[int, np.ndarray] = {}
        self.degradation = with_defects(degradation or face_degradation(), with_scratches)

    def _face(self, file_index: int) -> np.ndarray:
        """The resized face of file ``file_index``; resizing once per file is what the cache saves."""
        if file_index in self._faces:
            return self._faces[file_index]
        face = center_square_resize(self.pool.load(file_index), self.size)
        if self.cache:
            face.setflags(write=False)
            self._faces[file_index] = face
        return face

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        face = self._face(epoch_file_index(self.seed, self.epoch, index, len(self.pool)))
        clean = random_grayscale(random_hflip(face, rng), rng, self.grayscale_prob)
        degraded = sample_degradation(clean, rng, self.degradation).image
        return {"degraded": image_to_tensor(degraded), "clean": image_to_tensor(clean)}
