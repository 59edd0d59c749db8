"""Alignment of a face to the released 5-point template (spec §5 steps 4-6).

A 4-DoF similarity (scale, rotation, translation) is fitted by least squares (Umeyama 1991) from
template coordinates of an ``S x S`` crop to the five image points; the crop is then resampled
through it. ``S`` is 256 for the 256 face model and 512 for the HR one; the template is the same
up to that scale, with the face shrunk by 1.3 so the crop keeps some context around it.

Numerics follow the released scripts exactly: the template is computed in single precision (the
fitted transform depends on it in the last digits) and the crop is a scikit-image bilinear warp
with zero fill. The warps only read the part of the photo the crop covers, so their cost does not
grow with the photo.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from skimage.transform import SimilarityTransform, warp
from skimage.util import img_as_float, img_as_ubyte

TEMPLATE_POINTS_256 = ((196.0, 226.0), (316.0, 226.0), (256.0, 286.0), (220.0, 360.4), (292.0, 360.4))
"""Eye centres, nose tip and mouth corners of the released template, in pixels of a 256 frame
(before the face is shrunk by :data:`FACE_SCALE`)."""
FACE_SCALE = 1.3
SAMPLE_MARGIN = 2
"""Pixels read beyond the covered area, so bilinear/nearest neighbours never fall off a window."""

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)``: half-open pixel window."""


def template_points(size: int) -> np.ndarray:
    """The five template points for an ``size x size`` crop, float32 ``5 x 2`` ``(x, y)``.

    ``(p * 1.3 + 1) / 2 * size`` with ``p`` the template in a [-1, 1] frame, all in float32 as in
    the released scripts (e.g. left eye (89, 108.5) at 256).
    """
    unit = np.array(TEMPLATE_POINTS_256, dtype=np.float32) / np.float32(256.0) - np.float32(1.0)
    return (unit * np.float32(FACE_SCALE) + np.float32(1.0)) / np.float32(2.0) * np.float32(size)


def estimate_alignment(points: np.ndarray, size: int) -> np.ndarray | None:
    """Least-squares similarity from template coordinates to image coordinates.

    Args:
        points: ``5 x 2`` ``(x, y)`` image points (:func:`~face_enhance.detection.five_points`).
        size: crop side ``S``.

    Returns:
        The ``3 x 3`` float64 matrix mapping crop pixel ``(x, y, 1)`` to image coordinates, or
        ``None`` when the points are degenerate (all equal).
    """
    template = template_points(size)
    if hasattr(SimilarityTransform, "from_estimate"):
        transform = SimilarityTransform.from_estimate(template, points)
        ok = bool(transform)
    else:  # scikit-image < 0.26
        transform = SimilarityTransform()
        ok = transform.estimate(template, points)
    if not ok or not np.all(np.isfinite(transform.params)):
        return None
    return np.asarray(transform.params, dtype=np.float64)


def translation(dx: float, dy: float) -> np.ndarray:
    """``3 x 3`` matrix adding ``(dx, dy)``."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def covered_box(matrix: np.ndarray, size: int, height: int, width: int, margin: int) -> Box:
    """Pixel window of an ``height x width`` image that the crop square maps into, plus ``margin``.

    The square is taken from -0.5 to ``size - 0.5`` (pixel edges) so nearest sampling is covered
    too. Clipped to the image; may be empty (``x0 >= x1``) for a crop entirely outside.
    """
    edge = (-0.5, size - 0.5)
    corners = np.array([[x, y, 1.0] for x in edge for y in edge]) @ matrix.T
    x0 = max(math.floor(corners[:, 0].min()) - margin, 0)
    y0 = max(math.floor(corners[:, 1].min()) - margin, 0)
    x1 = min(math.ceil(corners[:, 0].max()) + margin + 1, width)
    y1 = min(math.ceil(corners[:, 1].max()) + margin + 1, height)
    return x0, y0, x1, y1


def _crop_warp(
    image: np.ndarray, matrix: np.ndarray, size: int, prepare: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Bilinear, zero-filled ``size x size`` warp of ``prepare(window of image)``."""
    x0, y0, x1, y1 = covered_box(matrix, size, image.shape[0], image.shape[1], SAMPLE_MARGIN)
    shape = (size, size, *image.shape[2:])
    if x0 >= x1 or y0 >= y1:
        return np.zeros(shape)
    window = prepare(image[y0:y1, x0:x1])
    return warp(
        window, translation(-x0, -y0) @ matrix, output_shape=shape, order=1, mode="constant", cval=0.0
    )


def align_face(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The aligned crop as the released detection script writes it.

    Args:
        image: ``H x W x 3`` uint8 photo.
        matrix: template-to-image matrix from :func:`estimate_alignment`.
        size: crop side ``S``.

    Returns:
        ``S x S x 3`` uint8 (bilinear in [0, 1], zero outside the photo, rounded to 8 bits).
    """
    return img_as_ubyte(_crop_warp(image, matrix, size, img_as_float))


def reference_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The same crop kept as 0..255 floats; the warp-back matches the enhanced face's colours to it.

    Returns:
        ``S x S x 3`` float64 in 0..255.
    """
    return _crop_warp(image, matrix, size, lambda window: window.astype(np.float64))
