"""Paired training data of the pix2pix baseline: (degraded, clean) crops of one clean photo.

The same recipe as the latent mapping's pairs (spec §8.1), built from the core's pieces only: a
clean crop is augmented (crop, flip, 10 % grayscale), then degraded by the synthetic old-photo
model, so both images share crop, flip and grayscale draw. Each sample is a pure function of
``(seed, epoch, index)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from latent_restore.core.data import ImagePool, SeededDataset, augment, epoch_file_index, image_to_tensor
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects


class DegradedPairDataset(SeededDataset):
    """Paired (degraded, clean) crops.

    Args:
        clean_dirs: clean photo folder(s).
        crop_size: side ``S`` of the square crops.
        degradation: degradation ranges (default :class:`DegradationConfig`).
        seed: base seed.
        length: samples per epoch; defaults to the number of images.
        with_scratches: switch on the structured-defect stage (scratches, dust, creases).
        grayscale_prob: probability of a grayscale pair.
        cache: keep decoded images in memory.
        exclude_held_out: leave out the held-out evaluation photos of each folder.

    Items: ``{"degraded", "clean": 3 x S x S float32 in [-1, 1]}``.
    """

    def __init__(
        self,
        clean_dirs: str | Path | Iterable[str | Path],
        crop_size: int = 256,
        degradation: DegradationConfig | None = None,
        seed: int = 0,
        length: int | None = None,
        with_scratches: bool = False,
        grayscale_prob: float = 0.1,
        cache: bool = False,
        exclude_held_out: bool = False,
    ) -> None:
        self.pool = ImagePool(clean_dirs, cache=cache, exclude_held_out=exclude_held_out)
        if not len(self.pool):
            raise FileNotFoundError(f"no images found in {clean_dirs}")
        super().__init__(seed, length if length is not None else len(self.pool))
        self.crop_size = crop_size
        self.grayscale_prob = grayscale_prob
        self.degradation = with_defects(degradation or DegradationConfig(), with_scratches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        image = self.pool.load(epoch_file_index(self.seed, self.epoch, index, len(self.pool)))
        clean = augment(image, self.crop_size, rng, self.grayscale_prob)
        degraded = sample_degradation(clean, rng, self.degradation).image
        return {"degraded": image_to_tensor(degraded), "clean": image_to_tensor(clean)}
