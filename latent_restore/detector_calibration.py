"""Choose the scratch detector's threshold on photos it never saw.

The released detector masks a pixel from probability 0.4. That value belongs to its weights and
its loss: a detector trained with another loss (focal, Dice) is calibrated differently, and a
threshold too low marks texture as scratches, which the scratch mapping then repaints. The
threshold with the best mask F1 on synthetic defects of calibration photos is stored in
:attr:`~stage2_mapping.scratch_detector.ScratchDetectorConfig.threshold`, so it travels with the
weights; ``latent-restore eval`` then scores it on its own held-out photos.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import numpy as np

from latent_restore.metrics import MaskCounts
from latent_restore.pipeline import scratch_probability
from stage2_mapping.scratch_detector import ScratchDetector

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(2, 20))
"""Thresholds tried, 0.1 to 0.95."""


@dataclasses.dataclass
class ThresholdCalibration:
    """Mask counts per threshold over the calibration photos."""

    counts: dict[float, MaskCounts]

    @property
    def f1(self) -> dict[float, float]:
        return {t: c.f1 for t, c in self.counts.items()}

    @property
    def best(self) -> float:
        """The threshold of the best F1; of equals, the highest (fewer false alarms to repaint)."""
        scores = self.f1
        return max(scores, key=lambda t: (scores[t], t))


def calibrate_threshold(
    detector: ScratchDetector,
    cases: Iterable[tuple[np.ndarray, np.ndarray]],
    thresholds: Iterable[float] = THRESHOLDS,
) -> ThresholdCalibration:
    """Mask F1 of each threshold on ``cases``.

    Args:
        detector: the trained detector (its own threshold is ignored).
        cases: ``(photo, mask)`` pairs: uint8 ``H x W x 3`` photos with defects, not from the
            training set, and their true bool ``H x W`` defect masks.
        thresholds: the thresholds to try.

    Raises:
        ValueError: no case was given.
    """
    counts = {t: MaskCounts() for t in thresholds}
    seen = 0
    for photo, mask in cases:
        prob = scratch_probability(detector, photo.astype(np.float32) / 255.0)
        for threshold, count in counts.items():
            count.add(mask, prob >= threshold)
        seen += 1
    if not seen:
        raise ValueError("no calibration photos")
    return ThresholdCalibration(counts)


def with_threshold(detector: ScratchDetector, threshold: float) -> ScratchDetector:
    """A copy of ``detector`` whose config carries ``threshold``."""
    calibrated = copy.deepcopy(detector)
    calibrated.config = dataclasses.replace(detector.config, threshold=threshold)
    return calibrated
