"""Seeded sample generators and the §8.1 augmentations (crop, flip, grayscale), as pure functions.

Randomness is a function of ``(seed, epoch, index)`` (:func:`sample_rng`), so a sample can be
regenerated exactly and DataLoader workers need no seeding of global state.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

_PERMUTATION_TAG = 0x5045524D
"""Extra SeedSequence word so file-order permutations never share a stream with per-sample generators."""


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of ``(seed, epoch, index)``, one stream per triple."""
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be non-negative, got {(seed, epoch, index)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


@functools.lru_cache(maxsize=32)
def _permutation(seed: int, epoch: int, cycle: int, count: int) -> np.ndarray:
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch, cycle, count, _PERMUTATION_TAG]))
    perm = order.permutation(count)
    perm.setflags(write=False)
    return perm


def epoch_file_index(seed: int, epoch: int, index: int, count: int) -> int:
    """Which of ``count`` files sample ``index`` uses: every file once per ``count`` consecutive indices.

    Indices are cut into cycles of ``count``; each cycle visits the files in its own permutation of
    ``(seed, epoch, cycle)``, so a dataset longer than its folder still sees all files evenly.
    """
    if count <= 0:
        raise ValueError("no images to sample from")
    cycle, position = divmod(int(index), int(count))
    return int(_permutation(int(seed), int(epoch), cycle, int(count))[position])


def fit_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Upscale (bicubic) so the short side is at least ``size``; larger images are returned unchanged."""
    height, width = image.shape[:2]
    short = min(height, width)
    if short >= size:
        return image
    scale = size / short
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    return cv2.resize(image, new, interpolation=cv2.INTER_CUBIC).reshape(new[1], new[0], *image.shape[2:])


FLAT_CROP_STD = 1.0
"""Crops whose every channel has a standard deviation below this (in 8-bit levels) count as flat."""

FLAT_CROP_TRIES = 8


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly placed ``size x size`` crop (after :func:`fit_short_side`), always a fresh copy.

    Flat crops (blown-out highlights, a uniform border) are re-drawn, up to ``FLAT_CROP_TRIES``
    placements in all; if every placement is flat, the last one is used. They teach nothing, and
    with a standard deviation under one 8-bit level instance normalisation's epsilon dominates
    the variance, which makes its gradients ill-conditioned: a single saturated-white 64 px crop
    gave a stem gradient 200 times the usual size and, from rounding differences alone, different
    gradients for the same batch split across one or two processes.
    """
    image = fit_short_side(image, size)
    height, width = image.shape[:2]
    for _ in range(FLAT_CROP_TRIES):
        top = int(rng.integers(0, height - size + 1))
        left = int(rng.integers(0, width - size + 1))
        crop = image[top : top + size, left : left + size]
        if not _is_flat(crop):
            break
    return crop.copy()


def _is_flat(crop: np.ndarray) -> bool:
    pixels = crop.reshape(-1, crop.shape[2] if crop.ndim == 3 else 1).astype(np.float32)
    return bool((pixels.std(axis=0) < FLAT_CROP_STD).all())


def center_square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size x size`` (area when shrinking, bicubic when growing)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation).reshape(size, size, *image.shape[2:])


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is exactly ``size`` (area when shrinking, bicubic when growing).

    Unlike :func:`fit_short_side` this also shrinks: it shows a network a photo at the scale an
    inference path resizes it to.
    """
    height, width = image.shape[:2]
    short = min(height, width)
    if short == size:
        return image
    scale = size / short
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    interpolation = cv2.INTER_AREA if short > size else cv2.INTER_CUBIC
    return cv2.resize(image, new, interpolation=interpolation).reshape(new[1], new[0], *image.shape[2:])


def random_hflip(image: np.ndarray, rng: np.random.Generator, prob: float = 0.5) -> np.ndarray:
    """Mirror left-right with probability ``prob`` (one draw from ``rng`` either way)."""
    if rng.random() < prob:
        return np.ascontiguousarray(image[:, ::-1])
    return image


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> its luma repeated on three channels, bit-exact with PIL ``convert("L")``."""
    rgb = image.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return np.repeat(luma.astype(np.uint8)[..., None], 3, axis=2)


def random_grayscale(image: np.ndarray, rng: np.random.Generator, prob: float = 0.1) -> np.ndarray:
    """:func:`to_grayscale` with probability ``prob`` (§8.1: 10 %), one draw from ``rng`` either way."""
    return to_grayscale(image) if rng.random() < prob else image


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x C`` uint8 -> ``C x H x W`` float32 in ``[-1, 1]`` (``H x W`` gives ``1 x H x W``)."""
    array = image[..., None] if image.ndim == 2 else image
    return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1.0


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``H x W`` {0, 1} mask -> ``1 x H x W`` float32 {0, 1}."""
    return torch.from_numpy(np.array(mask, dtype=np.float32))[None]


def augment(image: np.ndarray, crop_size: int, rng: np.random.Generator, grayscale_prob: float) -> np.ndarray:
    """§8.1 augmentation: random crop (small images upscaled), flip p 0.5, gray with ``grayscale_prob``."""
    image = random_crop(image, crop_size, rng)
    image = random_hflip(image, rng)
    return random_grayscale(image, rng, grayscale_prob)
