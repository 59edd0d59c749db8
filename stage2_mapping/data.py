"""Training data of the mapping stage and of the scratch detector.

Mapping pairs are the core's (degraded, clean, mask) pairs (:mod:`latent_restore.core.data.paired`),
shared with the pix2pix baseline; the scratch variants switch their structured defects on.
The scratch detector (TPAMI 2022 §3.4) has no released training data; its samples are grayscale
degraded crops with synthetic defects and their masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch

from latent_restore.core.data import (
    PairedDegradationDataset,
    PooledDataset,
    augment,
    image_to_tensor,
    mask_to_tensor,
    to_grayscale,
)
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects

MappingPairDataset = PairedDegradationDataset
"""The mapping's (degraded, clean, mask) pairs: :class:`latent_restore.core.data.PairedDegradationDataset`."""


class ScratchDetectionDataset(PooledDataset):
    """Grayscale degraded crops with synthetic structured defects and their exact masks.

    The crop is converted to grayscale before degrading and colour-ageing ops are disabled, so the
    whole chain stays gray and the mask is exact for the single output channel.

    Args:
        clean_dirs: clean photo folder(s).
        crop_size: side ``S`` of the square crops.
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of images.
        degradation: degradation ranges (default :class:`DegradationConfig`); defects are always on.
        no_defect_prob: probability of a negative sample without defects.
        cache: keep decoded images in memory.
        exclude_held_out: leave out the held-out evaluation photos of each folder.

    Items: ``{"image": 1 x S x S float32 in [-1, 1], "mask": 1 x S x S float32 {0, 1}}``.
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
    ) -> None:
        super().__init__(clean_dirs, seed, length, cache=cache, exclude_held_out=exclude_held_out)
        config = degradation or DegradationConfig()
        config = dataclasses.replace(config, colour=dataclasses.replace(config.colour, prob=0.0))
        self.crop_size = crop_size
        self.no_defect_prob = no_defect_prob
        self.plain = with_defects(config, False)
        self.defected = with_defects(config, True)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        gray = to_grayscale(augment(self.source_image(index), self.crop_size, rng, grayscale_prob=0.0))
        defects = rng.random() >= self.no_defect_prob
        result = sample_degradation(gray, rng, self.defected if defects else self.plain)
        return {"image": image_to_tensor(result.image[..., 0]), "mask": mask_to_tensor(result.mask)}
