"""The ``official`` preset: the released pipeline's pre- and post-processing around our networks.

The released scripts resize (quality mode: to a multiple of 4, scratch mode: through the detector's
256 px view), fill detected scratches before the mapping, min-max the output into uint8 and detect
faces with their own settings (spec §2–§7, ``docs/official-quirks.md``). The networks and the stage
order are the pipeline's; only these steps around them differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from latent_restore import official
from latent_restore.core.imaging import Photo, quantize, to_tensor
from latent_restore.options import (
    Mode,
    Progress,
    RestorationOptions,
    RestorationResult,
    Stage,
    check_finite_output,
)
from latent_restore.weights import Component

if TYPE_CHECKING:
    from latent_restore.pipeline import RestorationPipeline


def restore_official(
    pipeline: RestorationPipeline, photo: Photo, options: RestorationOptions, progress: Progress
) -> RestorationResult:
    """The released pipeline's pre/post-processing around the same networks (spec §2–§7).

    ``progress`` is told the same stages as the default preset reports (the global stage is never
    tiled here, so no tiles).
    """
    image = Image.fromarray(quantize(photo.rgb))
    stages: dict[str, np.ndarray] = {}
    mask = None
    mode = options.mode
    if mode.detects_scratches:
        progress.stage(Stage.SCRATCH_DETECTION)
        detection = official.detect_scratches(pipeline.components.get(Component.SCRATCH_DETECTOR), image)
        prepared = official.prepare_scratch_input(
            detection.full_size_image, detection.saved_mask[..., 0], hr=mode is Mode.HR
        )
        mask = prepared.mask[0, 0].numpy() > 0
        progress.stage(Stage.GLOBAL)
        out = pipeline.global_forward(*mode.global_components(), prepared.image, prepared.mask)
        if options.return_stages:
            stages["scratch_mask"] = detection.saved_mask[..., 0]
    else:
        progress.stage(Stage.GLOBAL)
        resized = np.asarray(official.resize_full_mode(image))
        out = pipeline.global_forward(*mode.global_components(), to_tensor(resized), None)
    check_finite_output(out.numpy(), "global restoration")
    restored = official.saved_restoration(out)
    if options.return_stages:
        stages["global"] = restored
    boxes: list[tuple[int, int, int, int]] = []
    if options.faces and pipeline.face_enhancer is not None:
        progress.stage(Stage.FACES)
        restored, boxes = pipeline.face_enhancer(
            restored, size=options.resolved_face_size(), official_detector=True
        )
    if options.colorize:
        progress.stage(Stage.COLORIZATION)
        restored = pipeline.colorize(restored)
        if options.return_stages:
            stages["colorize"] = restored
    return RestorationResult(restored.astype(np.float32) / 255.0, None, mask, boxes, stages, "official")
