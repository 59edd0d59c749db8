"""Procedural structured defects of old prints, each with its exact defect mask.

Scratches, cracks, creases, dust and stains are the "structured" degradations of Wan et al. (CVPR
2020 §3.3, TPAMI 2022 §3.4 and §4.1): local, with sharp or soft boundaries, and the reason the
mapping network needs a mask and a partial non-local block. The released training code only paints
white irregular holes (spec §8.1); these generators draw the defects the papers describe instead.

Every generator takes a uint8 ``H x W x 3`` RGB image, an injected :class:`numpy.random.Generator`
for the geometry and a few scalar controls, and returns a :class:`Defect`: the defected image and
its mask, ``1`` exactly where a pixel value changed. The mask is computed from the change itself
(not from the drawn shape), so a faint anti-aliased fringe that rounds back to the original value
is not labelled; coverage below :data:`MIN_ALPHA` is dropped so that the mask does not grow by
invisible 1-level halos. Scratch, crack, crease and dust tones are neutral (equal RGB), so a gray
photo stays gray; stains are brown unless ``monochrome``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from latent_restore.core.degradations.ops import LUMA_WEIGHTS, check_image, to_float, to_uint8

MIN_ALPHA = 0.1
"""Coverage below this is treated as no defect (a halo of at most ~1-2 grey levels otherwise)."""

_SHIFT = 4
_SUBPIXEL = 1 << _SHIFT

STAIN_TONE = (0.66, 0.50, 0.30)
"""Transmission of a typical brown water/foxing stain per RGB channel."""


class BlendMode(str, enum.Enum):
    """How a defect layer combines with the photo."""

    OVER = "over"
    """``x (1 - a) + tone a``: opaque material on top (emulsion loss shows white paper, dirt shows dark)."""
    MULTIPLY = "multiply"
    """``x (1 - a + tone a)``: a translucent dye absorbed by the paper (stains)."""


@dataclass(frozen=True)
class Defect:
    """A defected image and where it was changed.

    Attributes:
        image: ``H x W x 3`` uint8 RGB.
        mask: ``H x W`` float32, 1 where any channel differs from the input, else 0.
    """

    image: np.ndarray
    mask: np.ndarray


def change_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``H x W`` float32 mask, 1 where any channel of ``after`` differs from ``before``."""
    return np.any(before != after, axis=-1).astype(np.float32)


def composite(
    image: np.ndarray,
    alpha: np.ndarray,
    tone: np.ndarray | Sequence[float],
    mode: BlendMode = BlendMode.OVER,
) -> np.ndarray:
    """Blend a defect layer into ``image``.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        alpha: ``H x W`` coverage in ``[0, 1]``; values below :data:`MIN_ALPHA` count as 0.
        tone: defect colour on ``[0, 1]``: ``(3,)`` or ``H x W x 3``.
        mode: see :class:`BlendMode`.

    Returns:
        ``H x W x 3`` uint8 RGB.
    """
    a = np.clip(alpha.astype(np.float32), 0.0, 1.0)
    a = np.where(a < MIN_ALPHA, np.float32(0.0), a)[..., None]
    tone = np.asarray(tone, dtype=np.float32)
    x = to_float(image)
    out = x * (1.0 - a + a * tone) if BlendMode(mode) is BlendMode.MULTIPLY else x * (1.0 - a) + tone * a
    return to_uint8(out)


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    low, high = float(bounds[0]), float(bounds[1])
    return float(rng.uniform(low, high)) if high > low else low


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> OpenCV fixed point with :data:`_SHIFT` fractional bits."""
    return np.rint(np.asarray(points, dtype=np.float64) * _SUBPIXEL).astype(np.int32)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, samples: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, max(samples, 2))[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _intensity_profile(rng: np.random.Generator, samples: int, gaps: float) -> np.ndarray:
    """Smooth random intensity along a stroke in ``[0, 1]``; ``gaps`` > 0 breaks it into dashes."""
    t = np.linspace(0.0, 1.0, max(samples, 2))
    profile = np.full_like(t, 0.75)
    for frequency in (1.0, 2.5, 6.0):
        profile += rng.uniform(0.05, 0.25) * np.sin(2 * math.pi * (frequency * t + rng.uniform()))
    return np.clip(profile - gaps, 0.0, 1.0)


def _curve(rng: np.random.Generator, height: int, width: int, length: float, curvature: float) -> np.ndarray:
    """A gently bent cubic Bézier of about ``length`` pixels starting anywhere on or near the image."""
    start = np.array([rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height])
    angle = rng.uniform(0.0, 2.0 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    end = start + direction * length
    bend = curvature * length
    c1 = start + direction * length / 3 + normal * rng.normal(0.0, bend)
    c2 = start + direction * 2 * length / 3 + normal * rng.normal(0.0, bend)
    return _bezier(start, c1, c2, end, samples=int(length / 3) + 2)


class _StrokeCanvas:
    """Coverage and tone layers for anti-aliased strokes.

    Coverage is drawn with OpenCV's anti-aliased lines on a uint8 canvas (scaled intensity); the
    tone layer is drawn one pixel wider without anti-aliasing so every covered pixel has the
    stroke's exact tone rather than a tone blended with the empty background.
    """

    def __init__(self, height: int, width: int) -> None:
        self.alpha = np.zeros((height, width), np.uint8)
        self.tone = np.zeros((height, width), np.uint8)

    def segment(self, p: np.ndarray, q: np.ndarray, thickness: int, intensity: float, tone: float) -> None:
        value = round(255 * intensity)
        if value < 255 * MIN_ALPHA:
            return
        a, b = (tuple(int(v) for v in _fixed(point)) for point in (p, q))
        cv2.line(self.tone, a, b, round(255 * tone), thickness + 2, cv2.LINE_8, _SHIFT)
        cv2.line(self.alpha, a, b, value, thickness, cv2.LINE_AA, _SHIFT)

    def apply(self, image: np.ndarray) -> np.ndarray:
        tone = np.repeat(to_float(self.tone)[..., None], 3, axis=2)
        return composite(image, to_float(self.alpha), tone)


def add_scratches(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    length: Sequence[float] = (0.2, 0.9),
    max_width: int = 2,
    curvature: float = 0.08,
    bright_fraction: float = 0.8,
    opacity: Sequence[float] = (0.5, 1.0),
) -> Defect:
    """Thin, long, gently curved scratches, bright (emulsion scraped off) or dark (dirt in the groove).

    Args:
        image: ``H x W x 3`` uint8 RGB.
        rng: geometry, tone and intensity profile source.
        count: number of scratches.
        length: range of lengths as fractions of the image diagonal.
        max_width: scratches are 1 to ``max_width`` pixels thick.
        curvature: standard deviation of the Bézier bend relative to the length.
        bright_fraction: probability that a scratch is bright.
        opacity: range of peak opacity per scratch.

    Returns:
        The :class:`Defect`.
    """
    check_image(image)
    height, width = image.shape[:2]
    diagonal = math.hypot(height, width)
    canvas = _StrokeCanvas(height, width)
    for _ in range(count):
        points = _curve(rng, height, width, _uniform(rng, length) * diagonal, curvature)
        thickness = int(rng.integers(1, max(1, max_width) + 1))
        bright = rng.random() < bright_fraction
        tone = rng.uniform(0.85, 1.0) if bright else rng.uniform(0.0, 0.2)
        peak = _uniform(rng, opacity)
        profile = _intensity_profile(rng, len(points), gaps=rng.uniform(0.0, 0.4)) * peak
        for i in range(len(points) - 1):
            canvas.segment(points[i], points[i + 1], thickness, float(profile[i]), float(tone))
    out = canvas.apply(image)
    return Defect(out, change_mask(image, out))


def add_cracks(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    length: Sequence[float] = (0.2, 0.6),
    branch_prob: float = 0.06,
    jitter: float = 0.35,
    step: float = 3.0,
    bright_fraction: float = 0.6,
    opacity: Sequence[float] = (0.6, 1.0),
) -> Defect:
    """Branching cracks in a brittle emulsion: jagged random walks that fork.

    Each crack walks ``length * diagonal`` pixels in steps of ``step`` pixels, turning by
    ``N(0, jitter)`` radians per step; at every step it forks with ``branch_prob`` into a thinner
    branch of 30-60 % of the remaining length leaving at 30-70 degrees.
    """
    check_image(image)
    height, width = image.shape[:2]
    diagonal = math.hypot(height, width)
    canvas = _StrokeCanvas(height, width)
    for _ in range(count):
        bright = rng.random() < bright_fraction
        tone = rng.uniform(0.85, 1.0) if bright else rng.uniform(0.0, 0.25)
        peak = _uniform(rng, opacity)
        trunk_steps = max(1, int(_uniform(rng, length) * diagonal / step))
        budget = 3 * trunk_steps
        start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        stack = [(start, rng.uniform(0.0, 2.0 * math.pi), trunk_steps, 2 if rng.random() < 0.3 else 1, peak)]
        while stack and budget > 0:
            position, angle, steps, thickness, intensity = stack.pop()
            for _ in range(steps):
                if budget <= 0:
                    break
                budget -= 1
                angle += rng.normal(0.0, jitter)
                nxt = position + step * np.array([math.cos(angle), math.sin(angle)])
                canvas.segment(position, nxt, thickness, intensity, float(tone))
                position = nxt
                steps -= 1
                if rng.random() < branch_prob and steps > 2:
                    side = 1.0 if rng.random() < 0.5 else -1.0
                    stack.append(
                        (
                            position.copy(),
                            angle + side * rng.uniform(0.5, 1.2),
                            int(steps * rng.uniform(0.3, 0.6)),
                            1,
                            intensity * rng.uniform(0.6, 1.0),
                        )
                    )
    out = canvas.apply(image)
    return Defect(out, change_mask(image, out))


def _low_frequency(rng: np.random.Generator, height: int, width: int, cells: int, low: float) -> np.ndarray:
    """Smooth random modulation in ``[low, 1]``: a ``cells x cells`` random grid upsampled bicubically."""
    grid = rng.uniform(low, 1.0, size=(cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), low, 1.0)


def add_creases(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    width: Sequence[float] = (1.5, 4.0),
    opacity: Sequence[float] = (0.3, 0.7),
    bright_fraction: float = 0.8,
) -> Defect:
    """Folds: long, nearly straight soft bands crossing the whole print.

    The band's coverage is a Gaussian of the distance to a slightly bent centre line (``width`` is
    its sigma in pixels), modulated along the fold by low-frequency noise because a fold breaks the
    emulsion unevenly. Bright folds show cracked emulsion, dark ones ground-in dirt.
    """
    check_image(image)
    height, img_width = image.shape[:2]
    diagonal = math.hypot(height, img_width)
    out = image
    for _ in range(count):
        centre = np.array([rng.uniform(0, img_width), rng.uniform(0, height)])
        angle = rng.uniform(0.0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        start, end = centre - direction * diagonal, centre + direction * diagonal
        c1 = start + direction * diagonal * 2 / 3 + normal * rng.normal(0.0, 0.02 * diagonal)
        c2 = start + direction * diagonal * 4 / 3 + normal * rng.normal(0.0, 0.02 * diagonal)
        points = _bezier(start, c1, c2, end, samples=int(2 * diagonal / 4) + 2)
        line = np.full((height, img_width), 255, np.uint8)
        cv2.polylines(line, [_fixed(points)], False, 0, 1, cv2.LINE_8, _SHIFT)
        distance = cv2.distanceTransform(line, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        sigma = max(_uniform(rng, width), 0.5)
        alpha = np.exp(-0.5 * (distance / sigma) ** 2) * _uniform(rng, opacity)
        alpha *= _low_frequency(rng, height, img_width, cells=6, low=0.4)
        bright = rng.random() < bright_fraction
        tone = rng.uniform(0.85, 1.0) if bright else rng.uniform(0.1, 0.3)
        out = composite(out, alpha, (tone, tone, tone))
    return Defect(out, change_mask(image, out))


def add_dust(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    max_radius: float = 2.0,
    fibre_fraction: float = 0.15,
    bright_fraction: float = 0.5,
    opacity: Sequence[float] = (0.5, 1.0),
) -> Defect:
    """Dust specks (small ellipses up to ``max_radius`` pixels) and short curly fibres (hairs, lint)."""
    check_image(image)
    height, width = image.shape[:2]
    canvas = _StrokeCanvas(height, width)
    for _ in range(count):
        bright = rng.random() < bright_fraction
        tone = round(255 * (rng.uniform(0.85, 1.0) if bright else rng.uniform(0.0, 0.2)))
        value = round(255 * _uniform(rng, opacity))
        if rng.random() < fibre_fraction:
            points = _curve(rng, height, width, rng.uniform(4.0, 20.0), curvature=0.3)
            for i in range(len(points) - 1):
                canvas.segment(points[i], points[i + 1], 1, value / 255, tone / 255)
            continue
        centre = tuple(int(v) for v in _fixed([rng.uniform(0, width), rng.uniform(0, height)]))
        axes = tuple(int(v) for v in _fixed([rng.uniform(0.5, max_radius), rng.uniform(0.5, max_radius)]))
        rotation = float(rng.uniform(0.0, 180.0))
        cv2.ellipse(canvas.tone, centre, axes, rotation, 0, 360, tone, 2, cv2.LINE_8, _SHIFT)
        cv2.ellipse(canvas.tone, centre, axes, rotation, 0, 360, tone, -1, cv2.LINE_8, _SHIFT)
        if value >= 255 * MIN_ALPHA:
            cv2.ellipse(canvas.alpha, centre, axes, rotation, 0, 360, value, -1, cv2.LINE_AA, _SHIFT)
    out = canvas.apply(image)
    return Defect(out, change_mask(image, out))


def add_stains(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    radius: Sequence[float] = (0.05, 0.2),
    opacity: Sequence[float] = (0.2, 0.5),
    ring: float = 0.6,
    monochrome: bool = False,
) -> Defect:
    """Water stains and foxing: irregular translucent brown blobs with a darker tide-line rim.

    The outline is a circle of ``radius`` (fraction of the short side) perturbed by a few random
    harmonics; coverage is flat inside, peaks at the rim (dissolved dye collects at the drying edge,
    weighted by ``ring``) and is mottled by low-frequency noise. Blending is multiplicative.

    Args:
        monochrome: use the stain's luma as a neutral tone (a gray photo stays gray).
    """
    check_image(image)
    height, width = image.shape[:2]
    short = min(height, width)
    out = image
    for _ in range(count):
        r0 = max(2.0, _uniform(rng, radius) * short)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        harmonics = [(k, rng.uniform(0.0, 0.15), rng.uniform(0.0, 2 * math.pi)) for k in range(2, 6)]
        peak = _uniform(rng, opacity)
        tone = np.asarray(STAIN_TONE, np.float32) * np.float32(rng.uniform(0.85, 1.1))
        if monochrome:
            tone = np.full(3, float(tone @ LUMA_WEIGHTS), np.float32)
        mottling = _low_frequency(rng, height, width, cells=5, low=0.6)
        reach = math.ceil(r0 * 1.8)
        top, bottom = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
        left, right = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
        dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
        theta = np.arctan2(dy, dx)
        outline = r0 * (1.0 + sum(a * np.cos(k * theta + phase) for k, a, phase in harmonics))
        rho = np.sqrt(dx * dx + dy * dy) / outline
        inside = np.clip((1.05 - rho) / 0.15, 0.0, 1.0)
        rim = np.exp(-(((rho - 0.97) / 0.06) ** 2))
        alpha = np.zeros((height, width), np.float32)
        alpha[top:bottom, left:right] = peak * ((1.0 - ring * 0.5) * inside + ring * rim)
        out = composite(out, alpha * mottling, tone, BlendMode.MULTIPLY)
    return Defect(out, change_mask(image, out))


__all__ = [
    "MIN_ALPHA",
    "BlendMode",
    "Defect",
    "add_cracks",
    "add_creases",
    "add_dust",
    "add_scratches",
    "add_stains",
    "change_mask",
    "composite",
]
