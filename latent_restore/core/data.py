"""Image folders, loading, seeded augmentation and the clean-photo dataset (domain Y).

Training data follows the released loaders (spec §8.1): random ``crop_size`` crops, horizontal
flips with probability 0.5, 10 % of samples converted to grayscale (kept as three channels) and
values in ``[-1, 1]``. Unlike the released code, randomness is a pure function of
``(seed, epoch, index)`` (:func:`sample_rng`), so a sample can be regenerated exactly, the same
index gives a different sample in another epoch, and DataLoader workers need no seeding of
global state. Images smaller than the crop are upscaled (bicubic) until the short side fits
instead of being discarded, so tiny folders remain usable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from latent_restore.core.imaging import IMAGE_EXTENSIONS, ImageReadError, decode_image
from latent_restore.core.splits import split

logger = logging.getLogger(__name__)

_PERMUTATION_TAG = 0x5045524D
"""Extra SeedSequence word so file-order permutations never share a stream with per-sample generators."""


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_images(dirs: str | Path | Iterable[str | Path], recursive: bool = True) -> list[Path]:
    """Image files under ``dirs``, sorted by path, without hidden files or files in hidden folders.

    Args:
        dirs: one folder or several; each must exist.
        recursive: descend into sub-folders.

    Returns:
        Sorted, de-duplicated paths whose suffix (any case) is in :data:`IMAGE_EXTENSIONS`.
    """
    roots = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    found: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        candidates = root.rglob("*") if recursive else root.iterdir()
        for path in candidates:
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not _is_hidden(path, root):
                found.add(path)
    return sorted(found, key=lambda p: p.as_posix())


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to ``H x W x 3`` uint8 RGB.

    The EXIF orientation is applied (phone and scanner images are often stored rotated); 16-bit
    and 32-bit integer images are scaled to 8 bits rather than clipped; transparency is composited
    over white, as a print would show it; palette, CMYK, LAB etc. go through PIL's RGB conversion.
    The decoding is the pipeline's (:func:`~latent_restore.core.imaging.decode_image`, as in
    :func:`~latent_restore.core.imaging.read_photo`).

    Raises:
        OSError: the file cannot be read or decoded (the message says why).
    """
    try:
        return decode_image(path).to_rgb8()
    except ImageReadError as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc


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


class SeededDataset(Dataset):
    """Base for datasets whose sample ``index`` in epoch ``e`` is a pure function of ``(seed, e, index)``.

    Call :meth:`set_epoch` before iterating each epoch (DataLoader workers copy the dataset when an
    iterator is created, so with ``persistent_workers=True`` a new epoch would not reach them).
    """

    def __init__(self, seed: int, length: int) -> None:
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.seed = int(seed)
        self.length = int(length)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return sample_rng(self.seed, self.epoch, index)


def training_images(
    dirs: str | Path | Iterable[str | Path], recursive: bool = True, exclude_held_out: bool = False
) -> list[Path]:
    """:func:`list_images`, optionally without the photos of the fixed held-out split.

    The split (:mod:`latent_restore.core.splits`) hashes each path relative to the folder it was
    found under, so a folder listed here must be the same root that ``latent-restore eval --clean``
    is given (e.g. the whole ``clean`` tree, not one of its sub-folders) for training and
    evaluation to agree on which photos are held out.

    Args:
        dirs: one folder or several; each must exist.
        recursive: descend into sub-folders.
        exclude_held_out: drop the held-out photos of each folder.

    Returns:
        Sorted, de-duplicated image paths.
    """
    roots = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    if not exclude_held_out:
        return list_images(roots, recursive=recursive)
    kept: set[Path] = set()
    for root in roots:
        kept.update(split(list_images(root, recursive=recursive), root)[0])
    return sorted(kept, key=lambda p: p.as_posix())


class ImagePool:
    """Sorted image files with optional in-memory caching of decoded images (for small folders).

    Args:
        dirs: image folder(s).
        cache: keep decoded images in memory.
        recursive: descend into sub-folders.
        exclude_held_out: leave out the held-out evaluation photos (see :func:`training_images`).
    """

    def __init__(
        self,
        dirs: str | Path | Iterable[str | Path],
        cache: bool = False,
        recursive: bool = True,
        exclude_held_out: bool = False,
    ) -> None:
        self.paths = training_images(dirs, recursive=recursive, exclude_held_out=exclude_held_out)
        self.cache = cache
        self._decoded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        """Decoded ``H x W x 3`` uint8 RGB of file ``index`` (a cached array is shared: do not modify it)."""
        if index in self._decoded:
            return self._decoded[index]
        image = load_rgb(self.paths[index])
        if self.cache:
            image.setflags(write=False)
            self._decoded[index] = image
        return image


def augment(image: np.ndarray, crop_size: int, rng: np.random.Generator, grayscale_prob: float) -> np.ndarray:
    """§8.1 augmentation: random crop (small images upscaled), flip p 0.5, gray with ``grayscale_prob``."""
    image = random_crop(image, crop_size, rng)
    image = random_hflip(image, rng)
    return random_grayscale(image, rng, grayscale_prob)


class CleanImageDataset(SeededDataset):
    """Clean photos (domain Y, the input of VAE B).

    Args:
        dirs: image folder(s), searched recursively.
        crop_size: side ``S`` of the square crops.
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of images.
        grayscale_prob: probability of a grayscale sample (three equal channels).
        cache: keep decoded images in memory.
        exclude_held_out: leave out the held-out evaluation photos of each folder.

    Items: ``{"image": 3 x S x S float32 in [-1, 1]}``.
    """

    def __init__(
        self,
        dirs: str | Path | Iterable[str | Path],
        crop_size: int = 256,
        seed: int = 0,
        length: int | None = None,
        grayscale_prob: float = 0.1,
        cache: bool = False,
        exclude_held_out: bool = False,
    ) -> None:
        self.pool = ImagePool(dirs, cache=cache, exclude_held_out=exclude_held_out)
        if not len(self.pool):
            raise FileNotFoundError(f"no images found in {dirs}")
        super().__init__(seed, length if length is not None else len(self.pool))
        self.crop_size = crop_size
        self.grayscale_prob = grayscale_prob

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        image = self.pool.load(epoch_file_index(self.seed, self.epoch, index, len(self.pool)))
        return {"image": image_to_tensor(augment(image, self.crop_size, rng, self.grayscale_prob))}
