"""Training data of the mapping stage and of the scratch detector.

Mapping pairs are (degraded, clean) crops of the same clean photo (spec §8.1): the clean crop is
augmented first, then degraded, so both share the crop, flip and grayscale draw. For the scratch
variants the degraded input also carries structured defects and the exact defect mask that the
partial non-local block needs; as in the released ``--random_hole`` training, half of the samples
have no defects at all (an all-zero mask), so the network also learns to leave intact regions alone.
The scratch detector (TPAMI 2022 §3.4) has no released training data; its samples are grayscale
degraded crops with synthetic defects and their masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch

from latent_restore.core.data import (
    ImagePool,
    SeededDataset,
    augment,
    epoch_file_index,
    image_to_tensor,
    mask_to_tensor,
    to_grayscale,
)
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects


class MappingPairDataset(SeededDataset):
    """Paired (degraded, clean) crops for the latent mapping network.

    Args:
        clean_dirs: clean photo folder(s).
        crop_size: side ``S`` of the square crops.
        degradation: degradation ranges (default :class:`DegradationConfig`); its defect stage is
            switched by ``with_scratches``, not by ``degradation.defects.enabled``.
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of images.
        with_scratches: add structured defects (scratch models); otherwise the mask is all zero.
        no_defect_prob: with scratches, probability of a sample without defects (released: 1/2).
        grayscale_prob: probability of a grayscale pair (§8.1: 10 %).
        cache: keep decoded images in memory.
        exclude_held_out: leave out the held-out evaluation photos of each folder.

    Items: ``{"degraded", "clean": 3 x S x S float32 in [-1, 1], "mask": 1 x S x S float32 {0, 1}}``.
    """

    def __init__(
        self,
        clean_dirs: str | Path | Iterable[str | Path],
        crop_size: int = 256,
        degradation: DegradationConfig | None = None,
        seed: int = 0,
        length: int | None = None,
        with_scratches: bool = False,
        no_defect_prob: float = 0.5,
        grayscale_prob: float = 0.1,
        cache: bool = False,
        exclude_held_out: bool = False,
    ) -> None:
        self.pool = ImagePool(clean_dirs, cache=cache, exclude_held_out=exclude_held_out)
        if not len(self.pool):
            raise FileNotFoundError(f"no images found in {clean_dirs}")
        super().__init__(seed, length if length is not None else len(self.pool))
        config = degradation or DegradationConfig()
        self.crop_size = crop_size
        self.with_scratches = with_scratches
        self.no_defect_prob = no_defect_prob
        self.grayscale_prob = grayscale_prob
        self.plain = with_defects(config, False)
        self.defected = with_defects(config, True)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        image = self.pool.load(epoch_file_index(self.seed, self.epoch, index, len(self.pool)))
        clean = augment(image, self.crop_size, rng, self.grayscale_prob)
        defects = self.with_scratches and rng.random() >= self.no_defect_prob
        result = sample_degradation(clean, rng, self.defected if defects else self.plain)
        return {
            "degraded": image_to_tensor(result.image),
            "clean": image_to_tensor(clean),
            "mask": mask_to_tensor(result.mask),
        }


class ScratchDetectionDataset(SeededDataset):
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
        self.pool = ImagePool(clean_dirs, cache=cache, exclude_held_out=exclude_held_out)
        if not len(self.pool):
            raise FileNotFoundError(f"no images found in {clean_dirs}")
        super().__init__(seed, length if length is not None else len(self.pool))
        config = degradation or DegradationConfig()
        config = dataclasses.replace(config, colour=dataclasses.replace(config.colour, prob=0.0))
        self.crop_size = crop_size
        self.no_defect_prob = no_defect_prob
        self.plain = with_defects(config, False)
        self.defected = with_defects(config, True)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        image = self.pool.load(epoch_file_index(self.seed, self.epoch, index, len(self.pool)))
        gray = to_grayscale(augment(image, self.crop_size, rng, grayscale_prob=0.0))
        defects = rng.random() >= self.no_defect_prob
        result = sample_degradation(gray, rng, self.defected if defects else self.plain)
        return {"image": image_to_tensor(result.image[..., 0]), "mask": mask_to_tensor(result.mask)}
