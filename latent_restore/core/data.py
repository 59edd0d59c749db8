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
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from latent_restore.core import dist
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


class NoReadableImagesError(FileNotFoundError):
    """Image files were found, but none of them can be read (the message lists them with reasons)."""


_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
"""Markers without a length field (TEM, RST0-7)."""


def _jpeg_next_marker(data: bytes, pos: int) -> int:
    """Offset of the 0xFF that starts the next marker at or after ``pos``, or -1 at the end of ``data``.

    Inside entropy-coded data a 0xFF byte is followed by 0x00 (stuffing) or a restart marker;
    extra 0xFF bytes before a marker are fill. ``bytes.find`` keeps this far cheaper than decoding.
    """
    size = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= size:
            return -1
        code = data[pos + 1]
        if code == 0xFF:
            pos += 1
        elif code == 0x00 or 0xD0 <= code <= 0xD7:
            pos += 2
        else:
            return pos


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether the JPEG in ``data`` reaches its end-of-image marker.

    Walks the segments by their lengths (so an EXIF thumbnail's own end marker is skipped) and the
    entropy-coded scans to the next marker. A truncated file runs out before the end marker; data
    appended after it (a phone's motion-photo video) is allowed, as decoders stop there too. Costs
    one read of the file and a byte search, far less than decoding.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    size, pos = len(data), 2
    while True:
        if pos + 1 >= size:
            return False
        if data[pos] != 0xFF or data[pos + 1] == 0xFF:
            pos = _jpeg_next_marker(data, pos)  # extraneous bytes or fill before a marker
            if pos < 0:
                return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > size:
            return False
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if length < 2 or pos > size:
            return False
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            pos = _jpeg_next_marker(data, pos)
            if pos < 0:
                return False


def _tiff_is_complete(image: Image.Image, file_size: int) -> bool:
    """Whether every strip (or tile) of the first TIFF page lies inside the file."""
    tags = getattr(image, "tag_v2", {})
    offsets, counts = tags.get(273), tags.get(279)  # StripOffsets, StripByteCounts
    if offsets is None or counts is None:
        offsets, counts = tags.get(324), tags.get(325)  # TileOffsets, TileByteCounts
    if offsets is None or counts is None:
        return False
    offsets = offsets if isinstance(offsets, tuple) else (offsets,)
    counts = counts if isinstance(counts, tuple) else (counts,)
    if len(offsets) != len(counts) or not offsets:
        return False
    return max(o + c for o, c in zip(offsets, counts, strict=True)) <= file_size


def image_problem(path: str | Path) -> str | None:
    """Why the image file ``path`` cannot be used for training, or ``None`` when it can.

    Cheap where the format allows it, and still catching truncated files: the header is parsed
    with Pillow (no pixels decoded); then PNG files have their chunk structure and CRCs verified
    up to the end chunk, JPEG files their segments walked to the end-of-image marker
    (:func:`_jpeg_is_complete`) and TIFF files their strips checked to lie inside the file. Files
    of other formats, and files a fast check finds wanting, are decoded completely by the
    training reader (:func:`~latent_restore.core.imaging.decode_image`), which has the last word,
    so a file that decodes is never rejected. A file whose structure is intact but whose
    compressed data is corrupted can still pass and fail when it is decoded during training.

    Args:
        path: the image file.

    Returns:
        ``None`` for a usable file, else a short reason (``"empty file (0 bytes)"``, ...).
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if file_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as image:
            if image.width < 1 or image.height < 1:
                return "image has no pixels"
            if image.format == "PNG":
                image.verify()
                return None
            if image.format in ("JPEG", "MPO") and _jpeg_is_complete(path.read_bytes()):
                return None
            if image.format == "TIFF" and _tiff_is_complete(image, file_size):
                return None
    except UnidentifiedImageError:
        return "not an image file (unknown format)"
    except Image.DecompressionBombError as exc:
        return f"refused: {exc}"
    except (OSError, SyntaxError, ValueError, EOFError):
        pass  # the fast check failed: let the decoder decide (and give its reason)
    try:
        decode_image(path)
    except ImageReadError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return None


def readable_images(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The usable files of ``paths``, and ``(path, reason)`` for the others (:func:`image_problem`)."""
    usable: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for path in paths:
        reason = image_problem(path)
        if reason is None:
            usable.append(path)
        else:
            unreadable.append((path, reason))
    return usable, unreadable


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
