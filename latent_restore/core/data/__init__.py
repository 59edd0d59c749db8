"""Image folders, loading, seeded augmentation and the clean-photo dataset (domain Y).

Training data follows the released loaders (spec §8.1): random ``crop_size`` crops, horizontal
flips with probability 0.5, 10 % of samples converted to grayscale (kept as three channels) and
values in ``[-1, 1]``. Unlike the released code, randomness is a pure function of
``(seed, epoch, index)`` (:func:`sample_rng`), so a sample can be regenerated exactly, the same
index gives a different sample in another epoch, and DataLoader workers need no seeding of
global state. Images smaller than the crop are upscaled (bicubic) until the short side fits
instead of being discarded, so tiny folders remain usable.

Training folders are checked when an :class:`ImagePool` is built, before step 1: empty, truncated
and non-image files are skipped with one warning that lists each with its reason (see
:func:`image_problem`), so a single broken file among a thousand photos neither kills a run hours
in nor again after resume. A folder whose files are all unreadable is refused
(:class:`NoReadableImagesError`). Skipping rather than refusing is deliberate: the check is a pure
function of the files, so a resumed run skips the same ones and sees the same data order.

Modules: :mod:`.files` (listing, loading and checking image files), :mod:`.sampling` (seeded
generators, augmentations, array <-> tensor), :mod:`.datasets` (:class:`SeededDataset`,
:class:`ImagePool`, :class:`PooledDataset`, the clean-photo dataset) and :mod:`.paired` (the
(degraded, clean) pairs and the data-config base). Everything is re-exported here.
"""

from __future__ import annotations

from latent_restore.core.data.datasets import CleanImageDataset, ImagePool, PooledDataset, SeededDataset
from latent_restore.core.data.files import (
    NoReadableImagesError,
    image_problem,
    list_images,
    load_rgb,
    readable_images,
    training_images,
)
from latent_restore.core.data.paired import ImageDataConfig, PairedDataConfig, PairedDegradationDataset
from latent_restore.core.data.sampling import (
    augment,
    center_square_resize,
    epoch_file_index,
    fit_short_side,
    image_to_tensor,
    mask_to_tensor,
    random_crop,
    random_grayscale,
    random_hflip,
    resize_short_side,
    sample_rng,
    to_grayscale,
)

__all__ = [
    "CleanImageDataset",
    "ImageDataConfig",
    "ImagePool",
    "NoReadableImagesError",
    "PairedDataConfig",
    "PairedDegradationDataset",
    "PooledDataset",
    "SeededDataset",
    "augment",
    "center_square_resize",
    "epoch_file_index",
    "fit_short_side",
    "image_problem",
    "image_to_tensor",
    "list_images",
    "load_rgb",
    "mask_to_tensor",
    "random_crop",
    "random_grayscale",
    "random_hflip",
    "readable_images",
    "resize_short_side",
    "sample_rng",
    "to_grayscale",
    "training_images",
]
