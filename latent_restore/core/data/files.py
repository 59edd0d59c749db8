"""Image folders: listing, loading, and the header-level check that keeps broken files out of a run.

Training folders are checked when an :class:`~latent_restore.core.data.datasets.ImagePool` is built,
before step 1: empty, truncated and non-image files are skipped with one warning that lists each
with its reason (see :func:`image_problem`). Skipping rather than refusing is deliberate: the check
is a pure function of the files, so a resumed run skips the same ones and sees the same data order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from latent_restore.core.imaging import IMAGE_EXTENSIONS, ImageReadError, decode_image
from latent_restore.core.splits import split


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
