"""Training data of the mapping stage and of the scratch detector.

Mapping pairs are the core's (degraded, clean, mask) pairs (:mod:`latent_restore.core.data.paired`),
shared with the pix2pix baseline; the scratch variants switch their structured defects on.
The scratch detector (TPAMI 2022 §3.4) has no released training data; its samples are degraded
crops with synthetic defects and their masks, grayscale for the released single-channel detector
and in colour for a three-channel one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from latent_restore.core.data import (
    PairedDegradationDataset,
    PooledDataset,
    augment,
    image_to_tensor,
    mask_to_tensor,
    resize_short_side,
    to_grayscale,
)
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects

MappingPairDataset = PairedDegradationDataset
"""The mapping's (degraded, clean, mask) pairs: :class:`latent_restore.core.data.PairedDegradationDataset`."""


class ScratchDetectionDataset(PooledDataset):
    """Degraded crops with synthetic structured defects and their exact masks.

    With ``channels=1`` (the released detector) the crop is converted to grayscale before degrading
    and colour-ageing ops are disabled, so the whole chain stays gray and the mask is exact for the
    single output channel. With ``channels=3`` the crop keeps its colour and the degradation's
    colour ageing, so the detector meets the defects in colour, as the pipeline shows them (a
    stain's brown tint, white scratches on a sepia print).

    Args:
        clean_dirs: clean photo folder(s).
        crop_size: side ``S`` of the square crops.
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of images.
        degradation: degradation ranges (default :class:`DegradationConfig`); defects are always on.
        no_defect_prob: probability of a negative sample without defects.
        cache: keep decoded images in memory.
        exclude_held_out: leave out the held-out evaluation photos of each folder.
        view_size: ``None``: defects are drawn on a ``crop_size`` crop of the photo at its own
            resolution. A side ``V``: the photo is resized so its short side is ``V`` (the scale
            at which the pipeline runs the detector, :data:`latent_restore.pipeline.DETECTOR_SHORT_SIDE`),
            the degradation and the defects are drawn on a ``V x V`` square of it, and the sample
            is a ``crop_size`` crop of that. The detector then learns defects and photo texture at
            the sizes it meets them: a stain of a fifth of the photo, not of the crop.
        channels: 1 (grayscale samples) or 3 (RGB samples).
        grayscale_prob: with ``channels=3``, probability of a gray photo (many old prints are).

    Items: ``{"image": C x S x S float32 in [-1, 1], "mask": 1 x S x S float32 {0, 1}}``.
    """

    def __init__(
        self,
        clean_dirs: str | Path | Iterable[str | Path],
        crop_size: int = 256,
        seed: int = 0,
        length: int | None = None,
        degradation: DegradationConfig | None = None,
        no_defect_prob: float = 0.0,
        cache: bool = False,
        exclude_held_out: bool = False,
        view_size: int | None = None,
        channels: int = 1,
        grayscale_prob: float = 0.0,
    ) -> None:
        super().__init__(clean_dirs, seed, length, cache=cache, exclude_held_out=exclude_held_out)
        if view_size is not None and view_size < crop_size:
            raise ValueError(f"view_size {view_size} is smaller than crop_size {crop_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.view_size = view_size
        self.channels = channels
        self.grayscale_prob = grayscale_prob if channels == 3 else 0.0
        config = degradation or DegradationConfig()
        if channels == 1:
            config = dataclasses.replace(config, colour=dataclasses.replace(config.colour, prob=0.0))
        self.crop_size = crop_size
        self.no_defect_prob = no_defect_prob
        self.plain = with_defects(config, False)
        self.defected = with_defects(config, True)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        photo = self.source_image(index)
        if self.view_size is not None:
            photo = resize_short_side(photo, self.view_size)
        crop = augment(photo, self.view_size or self.crop_size, rng, self.grayscale_prob)
        if self.channels == 1:
            crop = to_grayscale(crop)
        defects = rng.random() >= self.no_defect_prob
        result = sample_degradation(crop, rng, self.defected if defects else self.plain)
        image, mask = (result.image[..., 0] if self.channels == 1 else result.image), result.mask
        if self.view_size is not None:
            top, left = (int(v) for v in rng.integers(0, self.view_size - self.crop_size + 1, size=2))
            window = np.s_[top : top + self.crop_size, left : left + self.crop_size]
            image, mask = image[window], mask[window]
        return {"image": image_to_tensor(np.ascontiguousarray(image)), "mask": mask_to_tensor(mask)}
