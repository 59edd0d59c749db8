"""Conversions between 8-bit photos and network tensors, and padding to a network's multiple.

Contract: inside networks images are RGB (or gray) float ``N x C x H x W`` in [-1, 1]; masks are
float ``N x 1 x H x W`` with 1 = defect. Nothing here resizes: a photo whose sides are not a
multiple of what a network needs is padded and the result cropped back.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x C`` (or ``H x W``) -> float32 ``1 x C x H x W`` in [-1, 1] (``(v/255 - 0.5)/0.5``)."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    t = torch.from_numpy(np.array(image, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return (t / 255.0 - 0.5) / 0.5


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``H x W`` mask (bool, 0/1 or 0/255) -> float32 ``1 x 1 x H x W`` of 0/1."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    scale = 255.0 if m.dtype == np.uint8 and m.max(initial=0) > 1 else 1.0
    return torch.from_numpy(m.astype(np.float32) / scale)[None, None]


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """``1 x C x H x W`` in [-1, 1] -> uint8 ``H x W x C`` (``H x W`` for one channel), rounded.

    No min-max stretching: the restored photo keeps its own black and white points.
    """
    t = ((tensor.detach()[0].to(torch.float32).cpu() + 1.0) * 127.5).clamp(0, 255).round()
    out = t.to(torch.uint8).permute(1, 2, 0).numpy()
    return out[..., 0] if out.shape[-1] == 1 else out


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "reflect", minimum: int = 0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the right/bottom of ``x`` (``N x C x H x W``) so both sides are multiples of ``multiple``.

    Reflection keeps statistics (and instance norms) close to the unpadded photo; it falls back to
    replication when a side is too small to reflect. ``minimum`` pads tiny inputs further (networks
    with instance norms need more than one cell at their coarsest scale).

    Returns:
        The padded tensor and the original ``(H, W)`` for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    target_h = max(h, minimum) + (-max(h, minimum)) % multiple
    target_w = max(w, minimum) + (-max(w, minimum)) % multiple
    ph, pw = target_h - h, target_w - w
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` for a result at the same scale."""
    return x[..., : size[0], : size[1]]


# --------------------------------------------------------------------------- reading and writing photos

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
_CV2_DEPTH_EXTENSIONS = frozenset({".png", ".tif", ".tiff"})


class ImageReadError(ValueError):
    """A file cannot be decoded as a photo; the message says why."""


@dataclass
class Photo:
    """A decoded photo, upright, with what is needed to write the result back faithfully.

    Attributes:
        rgb: float32 ``H x W x 3`` in [0, 1] (gray photos have three equal channels).
        alpha: float32 ``H x W`` in [0, 1], or None when the photo is opaque.
        gray_file: the file stored one channel (written back as gray).
        icc_profile: embedded colour profile, carried to the output.
        exif: EXIF block with the orientation already applied to the pixels.
        bit_depth: 8 or 16 bits per channel in the file.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    gray_file: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None
    bit_depth: int = 8

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.rgb.shape[0], self.rgb.shape[1]


def _read_deep(path: Path, data: bytes) -> np.ndarray | None:
    """16-bit colour PNG/TIFF pixels (PIL decodes those only to 8 bits); None for 8-bit files."""
    if path.suffix.lower() not in _CV2_DEPTH_EXTENSIONS:
        return None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 3:
        return None
    code = cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(array, code)


def _pil_to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or gray.max(initial=0) > 255 else 255.0
        gray = np.clip(gray / scale, 0, 1).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=2), None, True, 16 if scale > 255 else 8
    if mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32) / 255.0, 0, 1)
        return np.repeat(gray[..., None], 3, axis=2), None, True, 8
    if mode in ("1", "L", "LA", "La", "PA"):
        la = np.asarray(image.convert("LA"), dtype=np.float32) / 255.0
        alpha = la[..., 1] if mode in ("LA", "La", "PA") else None
        return np.repeat(la[..., :1], 3, axis=2), alpha, True, 8
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3].copy(), rgba[..., 3].copy(), False, 8
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, None, False, 8


def read_photo(path: str | os.PathLike[str]) -> Photo:
    """Decode a photo file completely, upright (EXIF orientation applied), as float RGB in [0, 1].

    Handles 8/16-bit, gray, palette, RGBA and CMYK files. Never writes to ``path``.

    Raises:
        ImageReadError: empty, truncated or undecodable files, with the reason.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            icc = opened.info.get("icc_profile")
            exif = upright.info.get("exif") or None
            rgb, alpha, gray, depth = _pil_to_arrays(upright)
            orientation_changed = opened.getexif().get(0x0112, 1) not in (0, 1)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file (unknown format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"refused: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot decode: {exc}") from None
    deep = _read_deep(path, data)
    if deep is not None and not orientation_changed:
        scaled = deep.astype(np.float32) / 65535.0
        rgb, depth = scaled[..., :3].copy(), 16
        alpha = scaled[..., 3].copy() if scaled.shape[2] == 4 else None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageReadError("image has no pixels")
    return Photo(rgb, alpha, gray, icc, exif, depth)


def photo_from_array(image: np.ndarray | Image.Image) -> Photo:
    """Wrap an in-memory image (uint8/uint16/float ``H x W [x C]`` array or PIL image) as a :class:`Photo`."""
    if isinstance(image, Image.Image):
        rgb, alpha, gray, depth = _pil_to_arrays(ImageOps.exif_transpose(image))
        return Photo(rgb, alpha, gray, image.info.get("icc_profile"), None, depth)
    array = np.asarray(image)
    if array.dtype == np.uint8:
        scaled, depth = array.astype(np.float32) / 255.0, 8
    elif array.dtype == np.uint16:
        scaled, depth = array.astype(np.float32) / 65535.0, 16
    elif np.issubdtype(array.dtype, np.floating):
        scaled, depth = np.clip(array.astype(np.float32), 0, 1), 8
    else:
        raise TypeError(f"unsupported array dtype {array.dtype}")
    if scaled.ndim == 2:
        return Photo(np.repeat(scaled[..., None], 3, axis=2), None, True, bit_depth=depth)
    if scaled.ndim != 3 or scaled.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected H x W, H x W x 1, 3 or 4, got shape {array.shape}")
    if scaled.shape[2] == 1:
        return Photo(np.repeat(scaled, 3, axis=2), None, True, bit_depth=depth)
    alpha = scaled[..., 3].copy() if scaled.shape[2] == 4 else None
    return Photo(scaled[..., :3].copy(), alpha, False, bit_depth=depth)


def quantize(values: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8, rounded."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def encode_png(
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    gray: bool = False,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
) -> bytes:
    """PNG bytes of a float [0, 1] (or uint8) ``H x W x 3`` or ``H x W`` photo, with profile and EXIF."""
    if rgb.ndim == 2:
        rgb, gray = rgb[..., None], True
    rgb8 = rgb if rgb.dtype == np.uint8 else quantize(rgb)
    channels = [rgb8[..., :1]] if gray else [rgb8]
    if alpha is not None:
        channels.append(quantize(alpha)[..., None] if alpha.dtype != np.uint8 else alpha[..., None])
    pixels = np.concatenate(channels, axis=2)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    buffer = io.BytesIO()
    kwargs = {}
    if icc_profile:
        kwargs["icc_profile"] = icc_profile
    if exif:
        kwargs["exif"] = exif
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    An interrupted run therefore leaves either the complete old file, the complete new one, or a
    hidden temporary that the next run ignores — never a truncated photo under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
