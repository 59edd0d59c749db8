"""Training data of VAE A: the old-photo domain, real (R) and synthetic (X) together (spec §8.1).

VAE A sees both real old photos and clean photos passed through the synthetic degradation, and the
latent discriminator uses the real/synthetic flag to pull the two into one latent space (CVPR 2020
§3.1, spec §8.3). Synthetic samples carry no scratch defects by default: holes and scratches are
handled by the mapping stage's masks, not by the VAE.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from latent_restore.core.data import ImagePool, SeededDataset, augment, image_to_tensor
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects


class DomainADataset(SeededDataset):
    """Old-photo domain: real old photos or synthetically degraded clean photos.

    As in the released loader, each sample is real with probability ``real_fraction`` (one of the
    ``real_dirs`` uniformly, e.g. the grayscale and the colour collection, then one of its files),
    otherwise a clean photo degraded on the fly; files are drawn uniformly at random.

    Args:
        clean_dirs: clean photo folder(s) for the synthetic samples.
        real_dirs: folders of real old photos; may be empty when ``real_fraction`` is 0.
        crop_size: side ``S`` of the square crops (smaller images are upscaled bicubically).
        degradation: synthetic degradation ranges (default :class:`DegradationConfig`).
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of clean plus real images.
        real_fraction: probability of a real old photo.
        with_scratches: keep the degradation's defect stage (off by default).
        grayscale_prob: probability of converting a sample to grayscale (§8.1: 10 %).
        cache: keep decoded images in memory.
        exclude_held_out: leave the held-out evaluation photos out of ``clean_dirs``.

    Items: ``{"image": 3 x S x S float32 in [-1, 1], "is_real": bool scalar tensor}``.
    """

    def __init__(
        self,
        clean_dirs: str | Path | Iterable[str | Path],
        real_dirs: Iterable[str | Path] | str | Path = (),
        crop_size: int = 256,
        degradation: DegradationConfig | None = None,
        seed: int = 0,
        length: int | None = None,
        real_fraction: float = 0.5,
        with_scratches: bool = False,
        grayscale_prob: float = 0.1,
        cache: bool = False,
        exclude_held_out: bool = False,
    ) -> None:
        if not 0.0 <= real_fraction <= 1.0:
            raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}")
        self.clean = ImagePool(clean_dirs, cache=cache, exclude_held_out=exclude_held_out)
        dirs = [real_dirs] if isinstance(real_dirs, (str, Path)) else list(real_dirs)
        self.real = [ImagePool(d, cache=cache) for d in dirs]
        if any(not len(pool) for pool in self.real):
            raise FileNotFoundError(f"a real old-photo folder holds no images: {dirs}")
        if not len(self.clean) and real_fraction < 1.0:
            raise FileNotFoundError(f"no clean images found in {clean_dirs}")
        if not self.real and real_fraction > 0.0:
            raise ValueError("real_fraction > 0 needs at least one real old-photo folder")
        total = len(self.clean) + sum(len(pool) for pool in self.real)
        super().__init__(seed, length if length is not None else total)
        self.crop_size = crop_size
        self.real_fraction = real_fraction
        self.grayscale_prob = grayscale_prob
        self.degradation = with_defects(degradation or DegradationConfig(), with_scratches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        is_real = bool(rng.random() < self.real_fraction)
        if is_real:
            pool = self.real[int(rng.integers(len(self.real)))]
            image = augment(pool.load(int(rng.integers(len(pool)))), self.crop_size, rng, self.grayscale_prob)
        else:
            clean = self.clean.load(int(rng.integers(len(self.clean))))
            clean = augment(clean, self.crop_size, rng, self.grayscale_prob)
            image = sample_degradation(clean, rng, self.degradation).image
        return {"image": image_to_tensor(image), "is_real": torch.tensor(is_real)}
