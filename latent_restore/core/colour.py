"""Keep monochrome photos monochrome.

The restoration networks always produce RGB, and they may tint a gray or sepia print slightly. A
photo whose chroma is (nearly) a function of its luminance — gray, sepia, cyanotype — is
recognised here, and its tone curve is re-applied to the restored luminance, so a gray photo comes
back exactly gray and a sepia one keeps its sepia.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
NUM_BINS = 16
MAX_CHROMA_RESIDUAL = 0.02  # 95th percentile, in [0, 1] units (about 5 of 255 levels)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of float RGB ``H x W x 3``."""
    return rgb @ LUMA


@dataclass
class MonochromeTone:
    """Chroma of a monochrome photo as a function of luminance (``B - Y`` and ``R - Y`` per luma bin)."""

    centres: np.ndarray
    blue_diff: np.ndarray
    red_diff: np.ndarray

    @classmethod
    def fit(cls, rgb: np.ndarray) -> MonochromeTone | None:
        """The tone curve of ``rgb`` (float ``H x W x 3`` in [0, 1]), or None if the photo is in colour."""
        y = luma(rgb)
        blue, red = rgb[..., 2] - y, rgb[..., 0] - y
        bins = np.minimum((y * NUM_BINS).astype(np.int64), NUM_BINS - 1).ravel()
        counts = np.bincount(bins, minlength=NUM_BINS)
        used = counts > 0
        centres, blue_curve, red_curve = [], [], []
        for b in np.flatnonzero(used):
            sel = bins == b
            centres.append(float(y.ravel()[sel].mean()))
            blue_curve.append(float(np.median(blue.ravel()[sel])))
            red_curve.append(float(np.median(red.ravel()[sel])))
        tone = cls(np.array(centres), np.array(blue_curve), np.array(red_curve))
        residual = np.maximum(
            np.abs(blue - tone._curve(tone.blue_diff, y)), np.abs(red - tone._curve(tone.red_diff, y))
        )
        return tone if float(np.percentile(residual, 95)) <= MAX_CHROMA_RESIDUAL else None

    def _curve(self, values: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.interp(y, self.centres, values).astype(np.float32)

    @property
    def is_gray(self) -> bool:
        return bool(np.abs(self.blue_diff).max() < 2 / 255 and np.abs(self.red_diff).max() < 2 / 255)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Recolour ``rgb`` with this tone: keep its luminance, take the chroma from the curve."""
        y = luma(rgb)
        if self.is_gray:
            return np.repeat(np.clip(y, 0, 1)[..., None], 3, axis=2)
        red = y + self._curve(self.red_diff, y)
        blue = y + self._curve(self.blue_diff, y)
        green = (y - LUMA[0] * red - LUMA[2] * blue) / LUMA[1]
        return np.clip(np.stack([red, green, blue], axis=-1), 0, 1)
