"""Paired (degraded, clean) training data and the data-config base of the image-to-image tasks.

A pair is cut from one clean photo (spec §8.1): the clean crop is augmented first (crop, flip,
grayscale), then degraded by the synthetic old-photo model, so both images share the crop, flip
and grayscale draw. With structured defects the degraded input also carries the exact defect mask
that the partial non-local block needs; as in the released ``--random_hole`` training, a share of
the samples (``no_defect_prob``, released: 1/2) then has no defects at all (an all-zero mask), so
the network also learns to leave intact regions alone. The latent mapping and the pix2pix baseline
train on these same pairs, so ``latent-restore eval`` compares them on equal terms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from latent_restore.core.data.datasets import PooledDataset
from latent_restore.core.data.sampling import augment, image_to_tensor, mask_to_tensor
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects


@dataclasses.dataclass
class ImageDataConfig:
    """What every stage's training data config has: where the photos are and how they are read.

    Attributes:
        clean_dirs: clean photo folders.
        crop_size: square crop side (a multiple of the networks' downsampling factor).
        length: samples per (virtual) epoch; ``None``: the number of files.
        cache: keep decoded images in memory.
        exclude_held_out: leave the held-out evaluation photos (:mod:`latent_restore.core.splits`)
            out; each folder must be the root that ``latent-restore eval`` uses.
        degradation: degradation ranges.
    """

    clean_dirs: list[str] = dataclasses.field(default_factory=list)
    crop_size: int = 256
    length: int | None = None
    cache: bool = False
    exclude_held_out: bool = False
    degradation: DegradationConfig = dataclasses.field(default_factory=DegradationConfig)


@dataclasses.dataclass
class PairedDataConfig(ImageDataConfig):
    """Paired (degraded, clean) data (see :class:`PairedDegradationDataset`).

    Attributes:
        with_scratches: add structured defects to the degraded inputs.
        grayscale_prob: probability of a grayscale pair.
    """

    with_scratches: bool = False
    grayscale_prob: float = 0.1

    def build(
        self,
        seed: int,
        *,
        with_scratches: bool | None = None,
        no_defect_prob: float | None = None,
        with_mask: bool = True,
    ) -> PairedDegradationDataset:
        """The data set these settings describe, for the run's ``seed``.

        Args:
            seed: the training seed (samples depend on it, the epoch and the index only).
            with_scratches: overrides the field where the task decides (``None``: the field).
            no_defect_prob: see :class:`PairedDegradationDataset` (``None``: every scratched
                sample has defects).
            with_mask: include the defect mask in the items.
        """
        return PairedDegradationDataset(
            self.clean_dirs,
            self.crop_size,
            self.degradation,
            seed,
            self.length,
            with_scratches=self.with_scratches if with_scratches is None else with_scratches,
            no_defect_prob=no_defect_prob,
            grayscale_prob=self.grayscale_prob,
            cache=self.cache,
            exclude_held_out=self.exclude_held_out,
            with_mask=with_mask,
        )


class PairedDegradationDataset(PooledDataset):
    """Paired (degraded, clean) crops, optionally with structured defects and their exact mask.

    Args:
        clean_dirs: clean photo folder(s).
        crop_size: side ``S`` of the square crops.
        degradation: degradation ranges (default :class:`DegradationConfig`); its defect stage is
            switched by ``with_scratches``, not by ``degradation.defects.enabled``.
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of images.
        with_scratches: add structured defects; otherwise the mask is all zero.
        no_defect_prob: with scratches, probability of a sample without defects (released: 1/2),
            drawn per sample; ``None``: every sample has defects (and nothing is drawn).
        grayscale_prob: probability of a grayscale pair (§8.1: 10 %).
        cache: keep decoded images in memory.
        exclude_held_out: leave out the held-out evaluation photos of each folder.
        with_mask: include the defect mask in the items.

    Items: ``{"degraded", "clean": 3 x S x S float32 in [-1, 1]}`` and, with ``with_mask``,
    ``"mask": 1 x S x S float32 {0, 1}``.
    """

    def __init__(
        self,
        clean_dirs: str | Path | Iterable[str | Path],
        crop_size: int = 256,
        degradation: DegradationConfig | None = None,
        seed: int = 0,
        length: int | None = None,
        with_scratches: bool = False,
        no_defect_prob: float | None = 0.5,
        grayscale_prob: float = 0.1,
        cache: bool = False,
        exclude_held_out: bool = False,
        with_mask: bool = True,
    ) -> None:
        super().__init__(clean_dirs, seed, length, cache=cache, exclude_held_out=exclude_held_out)
        config = degradation or DegradationConfig()
        self.crop_size = crop_size
        self.with_scratches = with_scratches
        self.no_defect_prob = no_defect_prob
        self.grayscale_prob = grayscale_prob
        self.with_mask = with_mask
        self.plain = with_defects(config, False)
        self.defected = with_defects(config, True)

    def _with_defects(self, rng: np.random.Generator) -> bool:
        """Whether this sample gets defects; draws from ``rng`` only when a share goes without."""
        if not self.with_scratches:
            return False
        if self.no_defect_prob is None:
            return True
        return bool(rng.random() >= self.no_defect_prob)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        clean = augment(self.source_image(index), self.crop_size, rng, self.grayscale_prob)
        result = sample_degradation(clean, rng, self.defected if self._with_defects(rng) else self.plain)
        item = {"degraded": image_to_tensor(result.image), "clean": image_to_tensor(clean)}
        if self.with_mask:
            item["mask"] = mask_to_tensor(result.mask)
        return item
