"""Conversions between 8-bit photos and network tensors, and padding to a network's multiple.

Contract: inside networks images are RGB (or gray) float ``N x C x H x W`` in [-1, 1]; masks are
float ``N x 1 x H x W`` with 1 = defect. Nothing here resizes: a photo whose sides are not a
multiple of what a network needs is padded and the result cropped back.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x C`` (or ``H x W``) -> float32 ``1 x C x H x W`` in [-1, 1] (``(v/255 - 0.5)/0.5``)."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    t = torch.from_numpy(np.array(image, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return (t / 255.0 - 0.5) / 0.5


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``H x W`` (or ``H x W x C``) mask, any nonzero value a defect -> float32 ``1 x 1 x H x W`` of 0/1.

    Masks reach the pipeline as bool (the detector), 0/1 or 0/255 (files); every nonzero pixel
    is a hole whatever the convention, since a half-marked pixel left unfilled shows as a stroke.
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    return torch.from_numpy(m > 0)[None, None].to(torch.float32)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """``1 x C x H x W`` in [-1, 1] -> uint8 ``H x W x C`` (``H x W`` for one channel), rounded.

    No min-max stretching: the restored photo keeps its own black and white points.
    """
    t = ((tensor.detach()[0].to(torch.float32).cpu() + 1.0) * 127.5).clamp(0, 255).round()
    out = t.to(torch.uint8).permute(1, 2, 0).numpy()
    return out[..., 0] if out.shape[-1] == 1 else out


def photo_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Float RGB ``H x W x 3`` in [0, 1] -> float32 ``1 x 3 x H x W`` in [-1, 1], in one copy.

    The result keeps the photo's pixel-interleaved (channels-last) memory order, which the networks
    run in, and no whole-photo temporary is made: on a 12 MP scan each costs 144 MB.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))
    return pixels.permute(2, 0, 1)[None].mul(2.0).sub_(1.0)


def photo_array(tensor: torch.Tensor) -> np.ndarray:
    """``1 x 3 x H x W`` in [-1, 1] -> float32 RGB ``H x W x 3`` in [0, 1], converted in place.

    ``tensor`` is consumed. A channels-last result (what the networks and :func:`run_tiled` return)
    becomes the array without any copy; any other layout costs one.
    """
    with torch.inference_mode():  # in place, also on the networks' inference tensors
        image = tensor[0].add_(1.0).mul_(0.5).clamp_(0.0, 1.0)
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


class HoleFill(str, enum.Enum):
    """How the defect pixels are filled before VAE A encodes a scratched photo."""

    WHITE = "white"
    """Painted white (the released convention, spec §3.2): the mapping learns to fill them."""
    INPAINT = "inpaint"
    """Filled from the hole's border by fast-marching inpainting (Telea): the encoder sees a
    smooth guess instead of a bright stroke, and the mapping only has to refine it. Thin scratches
    are most of a defect mask; a smooth fill of them is close, and a small mapping trained for a
    few thousand steps fills white strokes worse than the inpainting does."""


INPAINT_RADIUS = 3
"""Neighbourhood (pixels) from which :attr:`HoleFill.INPAINT` estimates each filled pixel."""


def fill_holes(x: torch.Tensor, mask: torch.Tensor, fill: HoleFill = HoleFill.WHITE) -> torch.Tensor:
    """Fill the defect pixels of ``x`` (``N x C x H x W`` in [-1, 1]) where ``mask`` > 0.

    The scratch mappings see their holes this way: at inference the pipeline fills the detected
    mask before VAE A encodes the photo, so training must fill the exact masks of the synthetic
    defects the same way (released ``--random_hole`` data, spec §8.1), or the network learns to
    fill holes it will never see. Which ``fill`` a mapping was trained with is part of its config.
    Pixels outside the mask are returned unchanged.
    """
    holes = mask > 0
    if HoleFill(fill) is HoleFill.WHITE:
        return torch.where(holes, torch.ones((), dtype=x.dtype, device=x.device), x)
    out = x.clone()
    for i in range(x.shape[0]):
        hole = holes[i, 0].cpu()
        if not hole.any():
            continue
        image = x[i].detach().cpu().add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
        image = cv2.inpaint(
            image.permute(1, 2, 0).contiguous().numpy(),
            hole.numpy().view(np.uint8),
            INPAINT_RADIUS,
            cv2.INPAINT_TELEA,
        )
        values = torch.from_numpy(image.reshape(*image.shape[:2], -1)[hole.numpy()])
        out[i].permute(1, 2, 0)[hole.to(x.device)] = values.to(x.device, x.dtype) / 127.5 - 1
    return out


HR_MASK_DILATION = 3
"""Times the released HR mode dilates the scratch mask by a 3x3 square (7x7 in all) before it
paints the holes white: the patch-attention mapping sees holes this much wider."""


def dilate_holes(mask: torch.Tensor, iterations: int = HR_MASK_DILATION) -> torch.Tensor:
    """``mask`` (``N x 1 x H x W``, 1 = defect) dilated ``iterations`` times by a 3x3 square.

    OpenCV's dilation (3x3 ones kernel, default border) of the released HR pre-processing, as
    one max filter of side ``2 * iterations + 1``: the pipeline and the HR mapping's training
    widen the holes the same way, so the mapping learns to fill the holes it will be shown.
    """
    if iterations <= 0:
        return mask
    return F.max_pool2d(mask, 2 * iterations + 1, stride=1, padding=iterations)


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
"""File suffixes (lower-case) treated as images, by the batch restorer and the training folders."""
_CV2_DEPTH_EXTENSIONS = frozenset({".png", ".tif", ".tiff"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


@dataclass
class DecodedImage:
    """An upright decoded image in the file's own value range: the one decoding path.

    :func:`read_photo` turns it into a float :class:`Photo`; ``latent_restore.core.data.load_rgb``
    into 8-bit RGB over white (:meth:`to_rgb8`) without a float round trip for plain 8-bit files.

    Attributes:
        color: ``H x W x 3`` (``H x W x 1`` for gray) values; ``color / peak`` is the intensity in
            [0, 1] (clipped to it for signed and float data).
        alpha: ``H x W`` on the same scale, or None when the image is opaque.
        peak: the value of full intensity (255 or 65535).
        gray_file, icc_profile, exif, bit_depth: as in :class:`Photo`.
    """

    color: np.ndarray
    alpha: np.ndarray | None
    peak: float
    gray_file: bool
    icc_profile: bytes | None = None
    exif: bytes | None = None
    bit_depth: int = 8

    def _unit(self, values: np.ndarray) -> np.ndarray:
        out = values.astype(np.float32) / self.peak
        if not (values.dtype.kind == "u" and values.dtype.itemsize <= 2):
            np.clip(out, 0, 1, out=out)
        return out

    def to_photo(self) -> Photo:
        """Float32 RGB (and alpha) in [0, 1]."""
        rgb = self._unit(self.color)
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        alpha = None if self.alpha is None else self._unit(self.alpha)
        return Photo(rgb, alpha, self.gray_file, self.icc_profile, self.exif, self.bit_depth)

    def to_rgb8(self) -> np.ndarray:
        """``H x W x 3`` uint8 RGB, transparency composited over white, deeper values rounded to 8 bits."""
        if self.alpha is None and self.color.dtype == np.uint8:
            rgb = self.color
        else:
            rgb = self._unit(self.color)
            if self.alpha is not None:
                alpha = self._unit(self.alpha)[..., None]
                rgb = rgb * alpha + (1.0 - alpha)
            rgb = quantize(rgb)
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        return np.ascontiguousarray(rgb)


def _read_deep(path: Path, data: bytes) -> np.ndarray | None:
    """16-bit colour PNG/TIFF pixels (PIL decodes those only to 8 bits); None for 8-bit files."""
    if path.suffix.lower() not in _CV2_DEPTH_EXTENSIONS:
        return None
    if data.startswith(_PNG_SIGNATURE) and len(data) > 24 and data[24] != 16:
        return None  # the IHDR bit depth says 8 bits or fewer: no second decode
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 3:
        return None
    code = cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(array, code)


def _pil_pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, float, bool, int]:
    """``(color, alpha, peak, gray_file, bit_depth)`` of an upright PIL image (see :class:`DecodedImage`)."""
    mode = image.mode
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(image)
        peak = 65535.0 if mode.startswith("I;16") or gray.max(initial=0) > 255 else 255.0
        return gray[..., None], None, peak, True, 16 if peak > 255 else 8
    if mode == "F":
        return np.asarray(image, dtype=np.float32)[..., None], None, 255.0, True, 8
    if mode in ("LA", "La"):
        la = np.asarray(image.convert("LA"))
        return la[..., :1], la[..., 1], 255.0, True, 8
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))[..., None], None, 255.0, True, 8
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(image.convert("RGBA"))
        return rgba[..., :3], rgba[..., 3], 255.0, False, 8
    return np.asarray(image.convert("RGB")), None, 255.0, False, 8


class PixelLimitError(ImageReadError):
    """A photo declares more pixels than the run allows; refused before any pixel is decoded."""


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise PixelLimitError(
            f"too many pixels: {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of "
            f"{max_pixels / 1e6:.1f} MP (--max-pixels raises it, if this machine has the memory)"
        )


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Let Pillow open headers up to ``max_pixels`` (its own bomb limit would refuse a larger, allowed
    photo); our limit is then checked from the header before any pixel is decoded."""
    if max_pixels is None or Image.MAX_IMAGE_PIXELS is None or max_pixels <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own check, from the same header, is the gate
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


_SRGB_PROFILE: bytes | None = None


def _srgb_profile() -> bytes:
    global _SRGB_PROFILE
    if _SRGB_PROFILE is None:
        _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _SRGB_PROFILE


def _profile_space(icc: bytes) -> str | None:
    """The colour space an ICC profile describes (``RGB``, ``GRAY``, ``CMYK``, ...), None if unreadable."""
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip()
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _to_profile_space(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Make pixels and profile agree: CMYK through its profile to sRGB (with an sRGB profile attached).

    A profile that does not describe the pixels written (a CMYK profile on RGB output, or an
    unreadable one) would make every colour-managed viewer show wrong colours, so it is dropped.
    """
    if image.mode == "CMYK":
        if icc and _profile_space(icc) == "CMYK":
            try:
                source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                srgb = ImageCms.ImageCmsProfile(io.BytesIO(_srgb_profile()))
                return ImageCms.profileToProfile(image, source, srgb, outputMode="RGB"), _srgb_profile()
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass
        return image.convert("RGB"), None
    if icc:
        gray = image.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
        if _profile_space(icc) != ("GRAY" if gray else "RGB"):
            return image, None
    return image, icc


def decode_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> DecodedImage:
    """Decode an image file completely, upright (EXIF orientation applied), in its own value range.

    Handles 8/16-bit, gray, palette, RGBA and CMYK files (CMYK through its ICC profile to sRGB).
    Never writes to ``path``.

    Args:
        path: the file.
        max_pixels: refuse, from the header alone, images with more pixels than this.

    Raises:
        PixelLimitError: more pixels than ``max_pixels`` or than Pillow's decompression-bomb limit.
        ImageReadError: empty, truncated or undecodable files, with the reason.
        OSError: the file cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings(), _pillow_limit(max_pixels):
            # Pillow only warns between its two bomb limits; a warning is no refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                _check_pixels(*opened.size, max_pixels)
                opened.load()
                icc = opened.info.get("icc_profile")
                upright = ImageOps.exif_transpose(opened)
                exif = upright.info.get("exif") or None
                upright, icc = _to_profile_space(upright, icc)
                color, alpha, peak, gray, depth = _pil_pixels(upright)
                orientation_changed = opened.getexif().get(0x0112, 1) not in (0, 1)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PixelLimitError(f"too many pixels: {exc}") from None
    except PixelLimitError:  # a ValueError, but already the reason
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot decode: {exc}") from None
    deep = _read_deep(path, data)
    if deep is not None and not orientation_changed:
        color, peak, depth = deep[..., :3], 65535.0, 16
        alpha = deep[..., 3] if deep.shape[2] == 4 else None
    if color.shape[0] < 1 or color.shape[1] < 1:
        raise ImageReadError("image has no pixels")
    return DecodedImage(color, alpha, peak, gray, icc, exif, depth)


def read_photo(path: str | os.PathLike[str], max_pixels: int | None = None) -> Photo:
    """Decode a photo file completely, upright (EXIF orientation applied), as float RGB in [0, 1].

    Handles 8/16-bit, gray, palette, RGBA and CMYK files. Never writes to ``path``.

    Raises:
        PixelLimitError: the header declares more than ``max_pixels`` pixels (nothing decoded).
        ImageReadError: empty, truncated or undecodable files, with the reason.
    """
    return decode_image(path, max_pixels).to_photo()


def photo_from_array(image: np.ndarray | Image.Image) -> Photo:
    """Wrap an in-memory image (uint8/uint16/float ``H x W [x C]`` array or PIL image) as a :class:`Photo`."""
    if isinstance(image, Image.Image):
        color, alpha, peak, gray, depth = _pil_pixels(ImageOps.exif_transpose(image))
        return DecodedImage(color, alpha, peak, gray, image.info.get("icc_profile"), None, depth).to_photo()
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
    text: dict[str, str] | None = None,
) -> bytes:
    """PNG bytes of a float [0, 1] (or uint8) ``H x W x 3`` or ``H x W`` photo, with profile, EXIF, text."""
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
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
        kwargs["pnginfo"] = info
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()
