"""Choose the colorizer's chroma scale on photos it did not train on.

CIEDE2000 punishes a wrong hue more than a missing colour, so a regression that is right on average
but unsure of each object's hue can score worse than leaving the photo gray. Scaling the predicted
chroma by ``s`` in [0, 1] moves between the two: ``s = 0`` is the gray photo, ``s = 1`` the raw
prediction. The best ``s`` on a calibration set the network never saw (a shrinkage estimate) is
stored in :attr:`~latent_restore.colorize.network.ColorizerConfig.chroma_scale`, so it travels
with the weights.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from latent_restore.colorize.inference import chroma_to_rgb, lightness_of, predict_ab
from latent_restore.colorize.network import Colorizer
from latent_restore.core.data import to_grayscale

SCALES = tuple(round(0.1 * k, 1) for k in range(0, 13))
"""Chroma scales tried, 0.0 (gray) to 1.2."""


@dataclasses.dataclass
class Calibration:
    """Mean CIEDE2000 per chroma scale, and the best scale."""

    errors: dict[float, float]

    @property
    def best(self) -> float:
        return min(self.errors, key=lambda s: (self.errors[s], s))


def calibrate(
    model: Colorizer, photos: Iterable[np.ndarray], scales: Iterable[float] = SCALES
) -> Calibration:
    """Mean CIEDE2000 to the colour originals of the colorized gray versions of ``photos``, per scale.

    Args:
        model: the trained colorizer (its own ``chroma_scale`` is ignored).
        photos: ``H x W x 3`` uint8 colour photos (not from the training set).
        scales: the chroma scales to try.
    """
    scales = tuple(scales)
    raw = with_chroma_scale(model, 1.0).eval()
    totals = dict.fromkeys(scales, 0.0)
    count = 0
    for photo in photos:
        reference = rgb2lab(photo)
        lightness, _ = lightness_of(to_grayscale(photo))
        ab = predict_ab(raw, lightness)
        for s in scales:
            colorized = chroma_to_rgb(lightness, ab * s, as_uint8=True)
            totals[s] += float(deltaE_ciede2000(reference, rgb2lab(colorized)).mean())
        count += 1
    if not count:
        raise ValueError("no calibration photos")
    return Calibration({s: total / count for s, total in totals.items()})


def with_chroma_scale(model: Colorizer, scale: float) -> Colorizer:
    """A copy of ``model`` whose config carries ``chroma_scale = scale``."""
    calibrated = copy.deepcopy(model)
    calibrated.config = dataclasses.replace(model.config, chroma_scale=scale)
    return calibrated
