"""Pasting enhanced faces back into the photo (spec §7).

For each face, in detection order: match the enhanced face's colours to the crop it came from
(per-channel histogram matching), warp it back through the inverse of the alignment transform
(scikit-image cubic), and blend it in with a soft mask: the part of the crop that saw real photo
content, warped back, eroded (9x9 kernel, three times) and blurred (25x25 Gaussian), so the seam
fades over a few pixels inside the face region.

The released script crashes on scikit-image >= 0.19 because the back-warped mask stays uint8 and
is scaled in place by a float; here the mask is a float from the start, which is what older
scikit-image returned, so the numbers are those the script produced before.

Everything works on a window around each face, so the cost per face does not grow with the photo.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from skimage.transform import SimilarityTransform, warp

from face_enhance.alignment import SAMPLE_MARGIN, Box, covered_box, reference_crop, translation

ERODE_KERNEL = 9
ERODE_ITERATIONS = 3
BLUR_KERNEL = 25
BLEND_MARGIN = SAMPLE_MARGIN + ERODE_KERNEL // 2 * ERODE_ITERATIONS + BLUR_KERNEL
"""Pixels around the back-warped crop where the mask and its reflections are certainly zero: the
blur then gives the same result on the window as on the whole photo."""


def match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel histogram matching of ``source`` to ``reference`` (spec §7 step 4).

    Each source level ``s`` becomes the smallest reference level ``r`` with
    ``cdf_ref[r] >= cdf_src[s]`` (256 bins over the whole image, CDFs normalised to end at 1).

    Args:
        source: ``H x W x C`` uint8 (the enhanced face).
        reference: ``H' x W' x C`` uint8 (the crop it replaces).

    Returns:
        ``source`` remapped, uint8, same shape.
    """
    if source.dtype != np.uint8 or reference.dtype != np.uint8:
        raise TypeError("histogram matching works on uint8 images")
    out = np.empty_like(source)
    for c in range(source.shape[-1]):
        src_counts = np.bincount(source[..., c].ravel(), minlength=256).cumsum()
        ref_counts = np.bincount(reference[..., c].ravel(), minlength=256).cumsum()
        # cdf_ref[r] >= cdf_src[s] compared exactly in integers: ref[r] * n_src >= src[s] * n_ref.
        lut = np.searchsorted(ref_counts * src_counts[-1], src_counts * ref_counts[-1], side="left")
        out[..., c] = np.minimum(lut, 255).astype(np.uint8)[source[..., c]]
    return out


def coverage_mask(matrix: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """Which crop pixels saw the photo (1) rather than the zero fill (0) (spec §7 step 2).

    Nearest-neighbour warp of an all-ones photo, read only where the crop lands.

    Returns:
        ``size x size`` uint8 of 0/1.
    """
    x0, y0, x1, y1 = covered_box(matrix, size, height, width, SAMPLE_MARGIN)
    if x0 >= x1 or y0 >= y1:
        return np.zeros((size, size), dtype=np.uint8)
    offset = np.array([x0, y0], dtype=np.float64)
    ones = np.ones((y1 - y0, x1 - x0), dtype=np.uint8)
    # Shifting coordinates by whole pixels after the transform is exact, so this nearest-neighbour
    # warp of a window picks the same pixels as one of the whole photo.
    forward = SimilarityTransform(matrix=matrix)
    return warp(
        ones,
        lambda xy: forward(xy) - offset,
        output_shape=(size, size),
        order=0,
        mode="constant",
        cval=0,
        preserve_range=True,
    )


def paste_box(matrix: np.ndarray, size: int, height: int, width: int) -> Box:
    """Window of the photo that pasting this face can change."""
    return covered_box(matrix, size, height, width, BLEND_MARGIN)


def paste_face(
    canvas: np.ndarray,
    origin: tuple[int, int],
    face: np.ndarray,
    coverage: np.ndarray,
    matrix: np.ndarray,
    strength: float = 1.0,
) -> None:
    """Blend one (colour-matched) face into ``canvas`` in place (spec §7 steps 5-6).

    Args:
        canvas: ``h x w x 3`` float64 photo region in 0..255, modified in place.
        origin: ``(x, y)`` of ``canvas[0, 0]`` in the photo.
        face: ``S x S x 3`` uint8 face in crop coordinates.
        coverage: ``S x S`` mask from :func:`coverage_mask`.
        matrix: template-to-image matrix of the face.
        strength: scales the blending weight; 1.0 is the released result, 0.0 leaves the photo.
    """
    size = face.shape[0]
    ox, oy = origin
    x0, y0, x1, y1 = paste_box(translation(-ox, -oy) @ matrix, size, canvas.shape[0], canvas.shape[1])
    if x0 >= x1 or y0 >= y1 or strength <= 0:
        return
    shape = (y1 - y0, x1 - x0)
    inverse = np.linalg.inv(matrix)
    offset = np.array([x0 + ox, y0 + oy], dtype=np.float64)
    backward = SimilarityTransform(matrix=inverse)
    warped_face = warp(
        face,
        inverse @ translation(x0 + ox, y0 + oy),
        output_shape=(*shape, face.shape[2]),
        order=3,
        mode="constant",
        cval=0.0,
        preserve_range=True,
    )
    mask = warp(
        coverage,
        lambda xy: backward(xy + offset),
        output_shape=shape,
        order=0,
        mode="constant",
        cval=0,
        preserve_range=True,
    ).astype(np.float64)
    kernel = np.ones((ERODE_KERNEL, ERODE_KERNEL), dtype=np.uint8)
    mask = cv2.erode(mask * 255.0, kernel, iterations=ERODE_ITERATIONS)
    alpha = (cv2.GaussianBlur(mask, (BLUR_KERNEL, BLUR_KERNEL), 0) / 255.0 * strength)[..., None]
    region = canvas[y0:y1, x0:x1]
    region[...] = np.clip((alpha * warped_face + (1.0 - alpha) * region) / 255.0, 0.0, 1.0) * 255.0


def warp_back(
    image: np.ndarray, faces: Sequence[np.ndarray], matrices: Sequence[np.ndarray], strength: float = 1.0
) -> np.ndarray:
    """Paste enhanced faces into a photo, one after the other, as the released warp-back script does.

    Each face is colour-matched to the crop of ``image`` it replaces (always the unmodified photo),
    then blended over the result so far. Between faces the photo stays in floating point; it is
    rounded to 8 bits once at the end.

    Args:
        image: ``H x W x 3`` uint8 photo the faces were cropped from.
        faces: ``S x S x 3`` uint8 enhanced faces in crop coordinates.
        matrices: their template-to-image matrices (:func:`~face_enhance.alignment.estimate_alignment`).
        strength: blending weight scale (1.0 = released result).

    Returns:
        ``H x W x 3`` uint8, a new array.
    """
    result = image.copy()
    if not faces:
        return result
    height, width = image.shape[:2]
    boxes = np.array([paste_box(m, f.shape[0], height, width) for m, f in zip(matrices, faces, strict=True)])
    x0, y0 = (int(v) for v in boxes[:, :2].min(axis=0))
    x1, y1 = (int(v) for v in boxes[:, 2:].max(axis=0))
    if x0 >= x1 or y0 >= y1:
        return result
    canvas = image[y0:y1, x0:x1].astype(np.float64)
    for face, matrix in zip(faces, matrices, strict=True):
        size = face.shape[0]
        reference = reference_crop(image, matrix, size).astype(np.uint8)
        matched = match_histograms(face, reference)
        coverage = coverage_mask(matrix, size, height, width)
        paste_face(canvas, (x0, y0), matched, coverage, matrix, strength)
    result[y0:y1, x0:x1] = np.rint(np.clip(canvas / 255.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    return result
