"""The dataset bases every stage builds on (seeded samples over a pool of checked images) and the
clean-photo dataset (domain Y).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from latent_restore.core import dist
from latent_restore.core.data.files import NoReadableImagesError, load_rgb, readable_images, training_images
from latent_restore.core.data.sampling import augment, epoch_file_index, image_to_tensor, sample_rng

logger = logging.getLogger(__name__)


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


class ImagePool:
    """Sorted, readable image files with optional in-memory caching of decoded images (for small folders).

    Every file is checked once here (:func:`image_problem`); unreadable ones are left out with a
    warning (on the main process) that lists each with its reason, and kept in
    :attr:`unreadable`. When files were found but none is readable, the pool refuses.

    Args:
        dirs: image folder(s).
        cache: keep decoded images in memory.
        recursive: descend into sub-folders.
        exclude_held_out: leave out the held-out evaluation photos (see :func:`training_images`).

    Raises:
        NoReadableImagesError: image files were found and none of them can be read.
    """

    def __init__(
        self,
        dirs: str | Path | Iterable[str | Path],
        cache: bool = False,
        recursive: bool = True,
        exclude_held_out: bool = False,
    ) -> None:
        found = training_images(dirs, recursive=recursive, exclude_held_out=exclude_held_out)
        self.paths, self.unreadable = readable_images(found)
        where = str(dirs) if isinstance(dirs, (str, Path)) else ", ".join(str(d) for d in dirs)
        listing = "".join(f"\n  {path}: {reason}" for path, reason in self.unreadable)
        if found and not self.paths:
            raise NoReadableImagesError(
                f"none of the {len(found)} image files in {where} can be read:{listing}"
            )
        if self.unreadable and dist.is_main_process():
            logger.warning(
                "skipping %d of %d image files in %s that cannot be read (fix or remove them to use them):%s",
                len(self.unreadable),
                len(found),
                where,
                listing,
            )
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


class PooledDataset(SeededDataset):
    """A :class:`SeededDataset` over one :class:`ImagePool` of checked images.

    The pool, the "no images" refusal and the default length (one epoch = every file once) are the
    same for every single-folder dataset, so they live here once.

    Args:
        dirs: image folder(s), searched recursively.
        seed: base seed; samples depend on ``(seed, epoch, index)`` only.
        length: samples per epoch; defaults to the number of images.
        cache: keep decoded images in memory.
        exclude_held_out: leave out the held-out evaluation photos of each folder.

    Raises:
        FileNotFoundError: the folders hold no image.
    """

    def __init__(
        self,
        dirs: str | Path | Iterable[str | Path],
        seed: int,
        length: int | None,
        cache: bool = False,
        exclude_held_out: bool = False,
    ) -> None:
        self.pool = ImagePool(dirs, cache=cache, exclude_held_out=exclude_held_out)
        if not len(self.pool):
            raise FileNotFoundError(f"no images found in {dirs}")
        super().__init__(seed, length if length is not None else len(self.pool))

    def source_image(self, index: int) -> np.ndarray:
        """The decoded photo that sample ``index`` of the current epoch is cut from (epoch-shuffled)."""
        return self.pool.load(epoch_file_index(self.seed, self.epoch, index, len(self.pool)))


class CleanImageDataset(PooledDataset):
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
        super().__init__(dirs, seed, length, cache=cache, exclude_held_out=exclude_held_out)
        self.crop_size = crop_size
        self.grayscale_prob = grayscale_prob

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        image = self.source_image(index)
        return {"image": image_to_tensor(augment(image, self.crop_size, rng, self.grayscale_prob))}
