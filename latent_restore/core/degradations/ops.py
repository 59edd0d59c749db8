"""Deterministic degradation operations on uint8 RGB photos.

Every function here is a pure function of an ``H x W x 3`` uint8 RGB image and explicit
parameters, and returns a new image of the same shape and dtype. The few operations that need a
random field (noise, film grain) take it from an injected :class:`numpy.random.Generator`, so the
result is fixed by the parameters plus the generator state. Choosing parameters is the sampler's
job (:mod:`latent_restore.core.degradations.sampler`); keeping the two apart means a sampled chain
can be recorded as ``(name, params)`` pairs and replayed exactly.

The operations follow what the papers describe for old photos (Wan et al., CVPR 2020 §3.2 and
TPAMI 2022 §4.1: blur, noise, low resolution, JPEG, half-tone, colour fading) and what the released
v2 chain implements (spec §8.2). Grayscale photos stay grayscale: operations that would otherwise
draw an independent random value per channel take ``monochrome=True`` and share one field across
the channels; only the explicitly colouring operations (colour cast, sepia, yellowing, a coloured
paper texture) can turn a gray photo into a coloured one.
"""

from __future__ import annotations

import enum
import io
import math

import cv2
import numpy as np
from PIL import Image

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights, the ones PIL's ``convert("L")`` uses."""

SEPIA_GAMMAS = (0.8, 1.0, 1.45)
"""Per-channel curves ``luma ** gamma`` of :func:`sepia`: black and white stay, mid-tones turn brown."""

YELLOWING_TINT = np.array([1.0, 0.93, 0.72], dtype=np.float32)
"""Transmission of a yellowed varnish/paper layer per RGB channel (blue is absorbed most)."""


class Interpolation(str, enum.Enum):
    """Resampling filters for :func:`down_up`."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    AREA = "area"

    @property
    def cv2_flag(self) -> int:
        return {
            Interpolation.NEAREST: cv2.INTER_NEAREST,
            Interpolation.BILINEAR: cv2.INTER_LINEAR,
            Interpolation.BICUBIC: cv2.INTER_CUBIC,
            Interpolation.AREA: cv2.INTER_AREA,
        }[self]


def check_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is a non-empty ``H x W x 3`` uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 H x W x 3 RGB image, got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image {image.shape}")


def is_grayscale(image: np.ndarray) -> bool:
    """Whether all three channels of ``image`` are identical."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float ``[0, 1]`` -> uint8, clipped and rounded to nearest (so ``to_uint8(to_float(x)) == x``)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def luminance(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float ``H x W x 3`` image, ``H x W`` float32."""
    return (image.astype(np.float32) @ LUMA_WEIGHTS).astype(np.float32)


def _field_shape(image: np.ndarray, monochrome: bool) -> tuple[int, int, int]:
    height, width = image.shape[:2]
    return (height, width, 1) if monochrome else (height, width, 3)


def gaussian_blur(image: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """Square Gaussian blur (OpenCV, reflect-101 border), as in the released v2 chain.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        kernel_size: odd side of the square kernel (v2 uses 3, 5 or 7).
        sigma: standard deviation in pixels, used for both axes.
    """
    check_image(image)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    return cv2.GaussianBlur(image, (kernel_size, kernel_size), sigmaX=sigma, sigmaY=sigma)


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised motion-blur kernel: a ``length``-pixel line through the centre at ``angle`` degrees."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    size = length if length % 2 else length + 1
    kernel = np.zeros((size, size), np.float32)
    kernel[size // 2, (size - length) // 2 : (size - length) // 2 + length] = 1.0
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR)
    total = kernel.sum()
    if total <= 0:
        kernel = np.zeros((size, size), np.float32)
        kernel[size // 2, size // 2] = 1.0
        return kernel
    return kernel / total


def motion_blur(image: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Linear camera/subject motion blur along ``angle`` degrees over ``length`` pixels."""
    check_image(image)
    return cv2.filter2D(image, -1, motion_kernel(length, angle), borderType=cv2.BORDER_REFLECT_101)


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """Normalised anti-aliased disk (pillbox) kernel; each tap is the disk's area over that pixel."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    half = math.ceil(radius - 0.5) if radius > 0.5 else 0
    size = 2 * half + 1
    offsets = (np.arange(size * supersample, dtype=np.float32) + 0.5) / supersample - size / 2.0
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    inside = (xx * xx + yy * yy <= max(radius, 0.5) ** 2).astype(np.float32)
    kernel = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return kernel / kernel.sum()


def defocus_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Out-of-focus blur: convolution with a disk of ``radius`` pixels (the lens' circle of confusion)."""
    check_image(image)
    return cv2.filter2D(image, -1, disk_kernel(radius), borderType=cv2.BORDER_REFLECT_101)


def gaussian_noise(
    image: np.ndarray, sigma: float, rng: np.random.Generator, *, monochrome: bool = False
) -> np.ndarray:
    """Additive white Gaussian noise of standard deviation ``sigma`` on ``[0, 1]`` values (v2: U(5, 50)/255).

    Args:
        monochrome: one noise value per pixel shared by the channels (keeps a gray photo gray).
    """
    check_image(image)
    noise = rng.standard_normal(_field_shape(image, monochrome), dtype=np.float32) * np.float32(sigma)
    return to_uint8(to_float(image) + noise)


def speckle_noise(
    image: np.ndarray, sigma: float, rng: np.random.Generator, *, monochrome: bool = False
) -> np.ndarray:
    """Multiplicative noise ``x + x * n`` with ``n ~ N(0, sigma)`` (v2's speckle mode)."""
    check_image(image)
    x = to_float(image)
    noise = rng.standard_normal(_field_shape(image, monochrome), dtype=np.float32) * np.float32(sigma)
    return to_uint8(x + x * noise)


def poisson_noise(
    image: np.ndarray, scale: float, rng: np.random.Generator, *, monochrome: bool = False
) -> np.ndarray:
    """Photon shot noise: ``Poisson(x * scale) / scale``; fewer photons (small ``scale``) -> stronger noise.

    With ``monochrome`` the count is drawn once per pixel from the luma, as for a gray film scan.
    """
    check_image(image)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    x = to_float(image)
    base = luminance(x)[..., None] if monochrome else x
    noisy = rng.poisson(base.astype(np.float64) * scale).astype(np.float32) / np.float32(scale)
    return to_uint8(x + (noisy - base))


def salt_and_pepper(
    image: np.ndarray,
    amount: float,
    salt_fraction: float,
    rng: np.random.Generator,
    *,
    monochrome: bool = False,
) -> np.ndarray:
    """Replace a fraction ``amount`` of values by white (``salt_fraction`` of them) or black.

    As in v2 (scikit-image ``s&p``) the draw is per channel element unless ``monochrome``.
    """
    check_image(image)
    draw = rng.random(_field_shape(image, monochrome))
    salt = draw < amount * salt_fraction
    pepper = (draw >= amount * salt_fraction) & (draw < amount)
    out = np.where(salt, np.uint8(255), image)
    return np.where(pepper, np.uint8(0), out).astype(np.uint8)


def film_grain(
    image: np.ndarray,
    strength: float,
    grain_size: float,
    rng: np.random.Generator,
    *,
    monochrome: bool = False,
) -> np.ndarray:
    """Film grain: spatially correlated noise, strongest in the mid-tones.

    Silver-halide grain clumps, so white noise is blurred with a Gaussian of ``grain_size`` pixels
    and rescaled to unit variance; its amplitude follows ``x (1 - x)`` of the local luma because
    grain is least visible in the clear and the fully exposed parts of the film.

    Args:
        strength: grain standard deviation in mid-gray, on ``[0, 1]`` values.
        grain_size: Gaussian sigma of the grain clumps in pixels (0 = white noise).
    """
    check_image(image)
    x = to_float(image)
    field = rng.standard_normal(_field_shape(image, monochrome), dtype=np.float32)
    if grain_size > 0:
        ksize = 2 * math.ceil(3 * grain_size) + 1
        taps = cv2.getGaussianKernel(ksize, grain_size).astype(np.float64)
        # std of blurred unit white noise is the kernel's L2 norm; dividing by it restores unit variance.
        norm = float(np.sum(taps**2))
        blurred = cv2.GaussianBlur(field, (ksize, ksize), sigmaX=grain_size, sigmaY=grain_size)
        field = blurred.reshape(field.shape) / np.float32(norm)
    luma = luminance(x)[..., None]
    amplitude = np.float32(strength) * (0.25 + 3.0 * luma * (1.0 - luma))
    return to_uint8(x + amplitude * field)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode as JPEG at ``quality`` (PIL/libjpeg, as in v2) and decode.

    A grayscale image is encoded as a one-channel JPEG so that chroma rounding cannot tint it.
    """
    check_image(image)
    gray = is_grayscale(image)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if gray else image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert("L" if gray else "RGB"))
    return np.repeat(out[..., None], 3, axis=2) if gray else np.ascontiguousarray(out)


def down_up(
    image: np.ndarray,
    scale_x: float,
    scale_y: float,
    down: Interpolation = Interpolation.BICUBIC,
    up: Interpolation = Interpolation.NEAREST,
) -> np.ndarray:
    """Low resolution: resize to ``round(scale * size)`` (at least 1 pixel) and back to the original size.

    v2 draws the small width/height from ``randint(size / 2, size)``, downscales bicubic and comes
    back with nearest or bilinear.
    """
    check_image(image)
    height, width = image.shape[:2]
    small = (max(1, round(width * scale_x)), max(1, round(height * scale_y)))
    reduced = cv2.resize(image, small, interpolation=Interpolation(down).cv2_flag)
    restored = cv2.resize(reduced, (width, height), interpolation=Interpolation(up).cv2_flag)
    return restored.reshape(image.shape)


def halftone_screen(height: int, width: int, cell_size: float, angle: float) -> np.ndarray:
    """Clustered-dot screen thresholds in ``[0, 1]``, ``H x W``: period ``cell_size``, angle in degrees."""
    theta = math.radians(angle)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    freq = np.float32(2.0 * math.pi / cell_size)
    u = (xx * math.cos(theta) + yy * math.sin(theta)) * freq
    v = (-xx * math.sin(theta) + yy * math.cos(theta)) * freq
    return 0.5 - 0.25 * (np.cos(u) + np.cos(v))


def halftone(
    image: np.ndarray,
    cell_size: float,
    angle: float,
    strength: float = 1.0,
    softness: float = 0.15,
    *,
    monochrome: bool = False,
) -> np.ndarray:
    """Amplitude-modulated half-tone printing (newspaper/book reproductions of photos).

    Each channel is thresholded against a clustered-dot screen, so tone becomes dot size. Colour
    channels use screens rotated 30 degrees apart, as real colour separations do, which produces the
    typical rosette; ``monochrome`` screens the luma once.

    Args:
        cell_size: screen period in pixels.
        angle: screen angle in degrees.
        strength: blend between the original (0) and the fully screened image (1).
        softness: width of the dot edge on the ``[0, 1]`` scale (0 gives hard binary dots).
    """
    check_image(image)
    x = to_float(image)
    height, width = image.shape[:2]
    channels = [luminance(x)] if monochrome else [x[..., c] for c in range(3)]
    screened = []
    for index, channel in enumerate(channels):
        screen = halftone_screen(height, width, cell_size, angle + 30.0 * index)
        edge = max(softness, 1e-3)
        screened.append(np.clip((channel - screen) / edge + 0.5, 0.0, 1.0))
    dots = np.stack(screened, axis=-1)
    if monochrome:
        dots = np.repeat(dots, 3, axis=2)
    return to_uint8((1.0 - strength) * x + strength * dots)


def fade(image: np.ndarray, amount: float) -> np.ndarray:
    """Dye fading: densities drop by ``amount``, so blacks lift toward the paper white and contrast falls.

    ``out = 1 - (1 - amount)(1 - x)``: white stays white, black becomes ``amount``.
    """
    check_image(image)
    return to_uint8(1.0 - (1.0 - amount) * (1.0 - to_float(image)))


def adjust_contrast(image: np.ndarray, factor: float, brightness: float = 0.0) -> np.ndarray:
    """Scale deviations from the mean luma by ``factor`` (< 1 lowers contrast) and add ``brightness``."""
    check_image(image)
    x = to_float(image)
    mean = float(luminance(x).mean())
    return to_uint8(mean + factor * (x - mean) + brightness)


def colour_cast(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Per-channel gains ``(r, g, b)``: a colour cast from a dye layer fading faster than the others."""
    check_image(image)
    return to_uint8(to_float(image) * np.asarray(gains, dtype=np.float32))


def sepia(image: np.ndarray, strength: float) -> np.ndarray:
    """Sepia toning: replace colour by a brown tone curve of the luma, blended with ``strength``.

    At ``strength=1`` the output depends on the luma only (one hue), so a colour photo and its
    grayscale version tone to the same image.
    """
    check_image(image)
    x = to_float(image)
    luma = np.clip(luminance(x), 0.0, 1.0)
    toned = np.stack([luma**gamma for gamma in SEPIA_GAMMAS], axis=-1)
    return to_uint8((1.0 - strength) * x + strength * toned)


def yellowing(image: np.ndarray, amount: float) -> np.ndarray:
    """Yellowed paper/varnish: a filter absorbing blue (and some green), strongest in the highlights.

    Light parts show the stained base; dark parts are dominated by the image silver, so the tint is
    weighted by ``0.3 + 0.7 * luma``.
    """
    check_image(image)
    x = to_float(image)
    weight = np.float32(amount) * (0.3 + 0.7 * luminance(x)[..., None])
    return to_uint8(x * (1.0 - weight * (1.0 - YELLOWING_TINT)))


def vignette(image: np.ndarray, strength: float, inner_radius: float = 0.5) -> np.ndarray:
    """Darken toward the corners (lens fall-off, uneven printing light).

    The normalised radius is 0 at the centre and 1 in the corners; brightness is unchanged inside
    ``inner_radius`` and falls by ``strength`` at the corners along a smoothstep.
    """
    check_image(image)
    height, width = image.shape[:2]
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height * 2.0 - 1.0
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width * 2.0 - 1.0
    radius = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / math.sqrt(2.0)
    t = np.clip((radius - inner_radius) / max(1.0 - inner_radius, 1e-6), 0.0, 1.0)
    falloff = 1.0 - strength * t * t * (3.0 - 2.0 * t)
    return to_uint8(to_float(image) * falloff[..., None])


def paper_texture(
    image: np.ndarray,
    texture: np.ndarray,
    strength: float,
    offset_x: float = 0.0,
    offset_y: float = 0.0,
    *,
    monochrome: bool = False,
) -> np.ndarray:
    """Multiply the photo by a paper texture (fibres, mottling, the paper's own tint).

    The texture is scaled up (bicubic) only if it is smaller than the image, then cropped at the
    fractional offsets and normalised by its mean luma, so it modulates without changing the
    overall exposure. ``monochrome`` uses the texture's luma (a gray photo stays gray).

    Args:
        texture: ``h x w x 3`` uint8 RGB texture of any size.
        strength: 0 leaves the image unchanged, 1 applies the full texture modulation.
        offset_x: where the crop starts, as a fraction of the horizontal slack.
        offset_y: as ``offset_x``, vertically.
    """
    check_image(image)
    check_image(texture)
    height, width = image.shape[:2]
    th, tw = texture.shape[:2]
    scale = max(height / th, width / tw, 1.0)
    if scale > 1.0:
        size = (max(width, math.ceil(tw * scale)), max(height, math.ceil(th * scale)))
        texture = cv2.resize(texture, size, interpolation=cv2.INTER_CUBIC)
        th, tw = texture.shape[:2]
    top = round(offset_y * (th - height))
    left = round(offset_x * (tw - width))
    patch = to_float(texture[top : top + height, left : left + width])
    luma = luminance(patch)
    mean = max(float(luma.mean()), 1e-3)
    modulation = luma[..., None] / mean if monochrome else patch / mean
    return to_uint8(to_float(image) * (1.0 - strength + strength * modulation))
