"""Aligned face crops of a whole photo or of a loose face crop, for training sets and evaluation.

The training and evaluation faces must be aligned exactly as the pipeline aligns faces before the
generator sees them, otherwise the generator learns a framing it never meets. Loose web crops are
often cut at the chin or the hairline, which hides the face from dlib's HOG window; padding the
border (edge pixels repeated) gives the detector and the 1.3x template the room they need.
"""

from __future__ import annotations

import numpy as np

from face_enhance.alignment import align_face, estimate_alignment
from face_enhance.detection import FaceDetector

PAD_FRACTION = 0.25
"""Border added on each side before detection, as a fraction of the longer side."""


def aligned_faces(
    image: np.ndarray, detector: FaceDetector, size: int, pad: float = PAD_FRACTION
) -> list[np.ndarray]:
    """Every face of ``image`` aligned to the ``size x size`` template, in detector order.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        detector: the pipeline's face detector.
        size: crop side (the face generator's ``load_size``).
        pad: border added before detection, as a fraction of the longer side (0: none).

    Returns:
        ``size x size x 3`` uint8 crops; faces with degenerate landmarks are left out.
    """
    border = round(pad * max(image.shape[:2]))
    if border:
        image = np.pad(image, ((border, border), (border, border), (0, 0)), mode="edge")
    crops = []
    for face in detector(image):
        matrix = estimate_alignment(face.five_points, size)
        if matrix is not None:
            crops.append(align_face(image, matrix, size))
    return crops
