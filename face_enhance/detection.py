"""Face detection and 68-point landmarks with dlib (spec §5 steps 1-3).

Detector: dlib's HOG frontal face detector. Landmarks: dlib's 68-point shape predictor
(``shape_predictor_68_face_landmarks.dat``), taken from the ``face-recognition-models`` package so
nothing is downloaded at run time. That model was trained on the iBUG 300-W data set, whose licence
excludes commercial use.

The released pipeline runs the detector without upsampling, which misses faces smaller than about
80 pixels (spec §9 quirk 14); :class:`DetectorConfig` makes upsampling and a minimum face size
settings, and :data:`OFFICIAL_DETECTOR` reproduces the released behaviour. Finding no face is a
normal outcome (an empty list), not an error.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np

logger = logging.getLogger(__name__)

LANDMARK_MODEL_PACKAGE = "face_recognition_models"
LANDMARK_MODEL_FILE = "models/shape_predictor_68_face_landmarks.dat"

# Indices into dlib's 68-point layout (spec §5 step 3).
LEFT_EYE_CORNERS = (36, 39)
RIGHT_EYE_CORNERS = (42, 45)
NOSE_TIP = 30
MOUTH_CORNERS = (48, 54)


@dataclass
class DetectorConfig:
    """Settings of :class:`FaceDetector`.

    The defaults find every face of roughly 40 pixels and more (one upsampling halves the HOG
    window's 80 pixels) while costing about four times a plain pass.

    Attributes:
        upsample: times the image is doubled before the HOG detector runs (0 = released pipeline).
        min_face_size: detections whose box side is below this many pixels are dropped; too small
            for the landmarks to be reliable or for the enhancement to help.
    """

    upsample: int = 1
    min_face_size: int = 32

    def __post_init__(self) -> None:
        if self.upsample < 0 or self.min_face_size < 0:
            raise ValueError(f"upsample and min_face_size must be >= 0, got {self}")


OFFICIAL_DETECTOR = DetectorConfig(upsample=0, min_face_size=0)
"""Detector settings of the released scripts."""


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One detected face.

    Attributes:
        box: ``(left, top, right, bottom)`` in pixels as dlib reports it (may reach past the border).
        landmarks: ``68 x 2`` int64 ``(x, y)`` points (may lie outside the image for cut faces).
    """

    box: tuple[int, int, int, int]
    landmarks: np.ndarray

    @property
    def five_points(self) -> np.ndarray:
        """``5 x 2`` int64 alignment points, see :func:`five_points`."""
        return five_points(self.landmarks)


def landmark_model_path() -> Path:
    """Location of dlib's 68-point model inside the installed ``face-recognition-models`` package.

    Found through the import system without importing the package (its ``__init__`` needs
    ``pkg_resources``, which current setuptools no longer ships).
    """
    spec = importlib.util.find_spec(LANDMARK_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {LANDMARK_MODEL_PACKAGE!r} package is not installed; it ships dlib's 68-point landmark "
            f"model (pip install face-recognition-models)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / LANDMARK_MODEL_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{LANDMARK_MODEL_FILE} not found in the {LANDMARK_MODEL_PACKAGE!r} package")


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners from 68 landmarks (spec §5 step 3).

    Each eye centre is the mean of the eye's two corners truncated towards zero, as the released
    scripts do (they are integer points).

    Args:
        landmarks: ``68 x 2`` integer ``(x, y)`` points.

    Returns:
        ``5 x 2`` int64: left eye, right eye, nose tip, left and right mouth corner.
    """
    lm = np.asarray(landmarks, dtype=np.int64)

    def centre(pair: tuple[int, int]) -> np.ndarray:
        return np.trunc((lm[pair[0]] + lm[pair[1]]) / 2).astype(np.int64)

    return np.stack(
        [centre(LEFT_EYE_CORNERS), centre(RIGHT_EYE_CORNERS), lm[NOSE_TIP], *(lm[i] for i in MOUTH_CORNERS)]
    )


class FaceDetector:
    """dlib HOG detector + 68-point shape predictor.

    Args:
        config: detector settings.
        landmark_model: path of ``shape_predictor_68_face_landmarks.dat``; by default the copy in
            the ``face-recognition-models`` package.
    """

    def __init__(self, config: DetectorConfig | None = None, landmark_model: Path | None = None) -> None:
        self.config = config or DetectorConfig()
        path = landmark_model or landmark_model_path()
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        """Detect faces in detector order (the order the released scripts number their crops).

        Args:
            image: ``H x W x 3`` uint8 RGB (or ``H x W`` gray).

        Returns:
            The faces, possibly none.
        """
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise TypeError(f"expected an H x W (x 3) uint8 image, got {image.dtype} {image.shape}")
        image = np.ascontiguousarray(image)
        faces = []
        for rect in self._detector(image, self.config.upsample):
            side = min(rect.width(), rect.height())
            if side < self.config.min_face_size:
                logger.debug("dropping a %d px face (min_face_size %d)", side, self.config.min_face_size)
                continue
            shape = self._predictor(image, rect)
            landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.int64)
            faces.append(DetectedFace((rect.left(), rect.top(), rect.right(), rect.bottom()), landmarks))
        logger.debug("found %d faces in a %dx%d image", len(faces), image.shape[1], image.shape[0])
        return faces
