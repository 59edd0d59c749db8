"""What a restoration is asked to do and what it returns: the typed values the pipeline, the CLI,
the web jobs and the batch runner share (presets, scratch context, precision, model, options,
results, the global stage's mode) and the errors they report. Precision and the device error are the core's
(:mod:`latent_restore.core.device`), shared with training.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from latent_restore.core.components import Component


class Preset(str, enum.Enum):
    DEFAULT = "default"
    OFFICIAL = "official"


class ScratchContext(str, enum.Enum):
    """How much of a scratched photo the partial non-local block attends over.

    ``tiled`` attends within windows sized so that scratch mode costs about 1.5x quality mode
    (see :func:`latent_restore.planning.plan_global`);
    ``global`` attends over the whole photo in one piece whenever memory allows (the released
    behaviour, slow on large photos).
    """

    TILED = "tiled"
    GLOBAL = "global"


class RestorationModel(str, enum.Enum):
    """The network of the global stage: the two-VAE latent translation or the pix2pix baseline."""

    TWO_VAE = "two-vae"
    PIX2PIX = "pix2pix"


class Mode(str, enum.Enum):
    """What the two-VAE global stage does to a photo: quality, scratch or HR (patch attention).

    Resolved once from the options (:attr:`RestorationOptions.mode`, :meth:`of`); the pipeline's
    stage list, its components, the ``official`` preset and the weights' mode list all read it
    instead of testing ``with_scratch`` and ``hr`` again.
    """

    QUALITY = "quality"
    SCRATCH = "scratch"
    HR = "hr"

    @classmethod
    def of(cls, with_scratch: bool, hr: bool) -> Mode:
        """The mode of these flags; ``hr`` only counts with scratches (see ``ignored_flags``)."""
        if not with_scratch:
            return cls.QUALITY
        return cls.HR if hr else cls.SCRATCH

    @property
    def detects_scratches(self) -> bool:
        """Whether the scratch detector runs and its mask reaches the mapping."""
        return self is not Mode.QUALITY

    def global_components(self) -> tuple[Component, Component]:
        """``(mapping, decoder)`` of the global stage in this mode."""
        return _GLOBAL_COMPONENTS[self]

    def components(self) -> tuple[Component, ...]:
        """Every component the global stage needs in this mode, in the order they run."""
        detector = (Component.SCRATCH_DETECTOR,) if self.detects_scratches else ()
        return (*detector, Component.VAE_A, *self.global_components())


_GLOBAL_COMPONENTS = {
    Mode.QUALITY: (Component.MAPPING_QUALITY, Component.VAE_B_QUALITY),
    Mode.SCRATCH: (Component.MAPPING_SCRATCH, Component.VAE_B_SCRATCH),
    Mode.HR: (Component.MAPPING_HR, Component.VAE_B_SCRATCH),
}


class Stage(str, enum.Enum):
    """The stages a restoration reports as it enters them, in order; the values are what progress shows."""

    SCRATCH_DETECTION = "scratch detection"
    GLOBAL = "global restoration"
    FACES = "faces"
    COLORIZATION = "colorization"


def planned_stages(options: RestorationOptions, faces_available: bool) -> list[Stage]:
    """The stages the pipeline will report for ``options`` (faces only where an enhancer is loaded).

    The pipeline, its ``official`` preset and the web page's progress all follow this one list.
    """
    stages = [Stage.SCRATCH_DETECTION] if options.mode.detects_scratches else []
    stages.append(Stage.GLOBAL)
    if options.faces and faces_available:
        stages.append(Stage.FACES)
    if options.colorize:
        stages.append(Stage.COLORIZATION)
    return stages


@dataclass(frozen=True)
class Progress:
    """Where the restoration of one photo is, told to whoever asked for it.

    An argument of :meth:`~latent_restore.pipeline.RestorationPipeline.__call__`, not state on the
    pipeline: a callback lives exactly as long as the call it watches, so a batch run, a web job and
    a benchmark sharing one pipeline never see each other's photos, and nobody has to reset it.
    A callback may raise to stop the restoration there (the web page cancels a job that way).

    Attributes:
        on_stage: called with a :class:`Stage`'s value as that stage starts.
        on_tile: called with ``(done, total)`` after each tile of a tiled global stage.
    """

    on_stage: Callable[[str], None] | None = None
    on_tile: Callable[[int, int], None] | None = None

    def stage(self, stage: Stage) -> None:
        """Report that ``stage`` starts."""
        if self.on_stage is not None:
            self.on_stage(stage.value)


class WeightsNotFoundError(FileNotFoundError):
    """No usable weights; the message says how to get some."""


class IncompatibleWeightsError(ValueError):
    """Components of one weights set that cannot work together (latent channels, downsampling)."""


@dataclass
class RestorationOptions:
    """What to do with one photo.

    Attributes:
        with_scratch: detect scratches and fill them (partial non-local block or patch attention).
        hr: use the patch-attention mapping for scratched high-resolution photos.
        faces: enhance faces when a face enhancer is available.
        keep_monochrome: gray and sepia photos come out gray and sepia.
        preset: ``default`` or ``official`` (the released pipeline's pre/post-processing).
        return_stages: also return the intermediate images.
        model: the global stage's network; ``pix2pix`` has no scratch, HR or official mode.
        colorize: colorize the result as the last stage (gray photos then come out in colour).
        face_size: 256 or 512, the face generator to use when both are present; None = 256, or
            512 under the ``official`` preset with ``hr`` (what the released pipeline does).
        scratch_context: ``tiled`` (bounded time) or ``global`` attention in scratch mode.
    """

    with_scratch: bool = False
    hr: bool = False
    faces: bool = True
    keep_monochrome: bool = True
    preset: Preset = Preset.DEFAULT
    return_stages: bool = False
    model: RestorationModel = RestorationModel.TWO_VAE
    colorize: bool = False
    face_size: int | None = None
    scratch_context: ScratchContext = ScratchContext.TILED

    def __post_init__(self) -> None:
        self.model = RestorationModel(self.model)
        self.preset = Preset(self.preset)
        self.scratch_context = ScratchContext(self.scratch_context)
        if self.face_size not in (None, 256, 512):
            raise ValueError(f"face_size must be 256 or 512, got {self.face_size}")

    @property
    def mode(self) -> Mode:
        """The global stage's mode these options ask for."""
        return Mode.of(self.with_scratch, self.hr)

    def resolved_face_size(self) -> int:
        """The face generator side these options prefer."""
        if self.face_size is not None:
            return self.face_size
        return 512 if self.preset is Preset.OFFICIAL and self.mode is Mode.HR else 256

    def ignored_flags(self) -> list[str]:
        """Flags that have no effect with the others (to say so instead of silently ignoring them)."""
        notes = []
        if self.hr and self.mode is Mode.QUALITY:
            notes.append(
                "--hr selects the patch-attention mapping of scratch mode: it has no effect without "
                "--with-scratch"
            )
        if self.face_size is not None and not self.faces:
            notes.append("--face-size has no effect with --no-faces")
        return notes


@dataclass
class RestorationResult:
    """Output of one photo.

    Attributes:
        image: float32 ``H x W x 3`` in [0, 1] (the input size; the rounded size under ``official``).
        alpha: the input's alpha channel, carried through, or None.
        scratch_mask: bool ``H x W`` of detected defects (scratch modes), else None.
        face_boxes: ``(left, top, right, bottom)`` per enhanced face.
        stages: intermediate images by stage name (when asked for).
        path: how the global stage was computed (``full``, ``nonlocal``, ``patch-attention``, ``tiles ...``,
            ``pix2pix``).
    """

    image: np.ndarray
    alpha: np.ndarray | None = None
    scratch_mask: np.ndarray | None = None
    face_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = "full"


FaceEnhancerFn = Callable[..., tuple[np.ndarray, list[tuple[int, int, int, int]]]]
"""``fn(uint8 H x W x 3, size=256|512, official_detector=bool)`` -> (uint8 image, face boxes)."""


class NonFiniteOutputError(ArithmeticError):
    """A network produced NaN or infinite values; the photo fails instead of coming out black."""


def check_finite_output(values: np.ndarray, stage: str) -> None:
    """Raise :class:`NonFiniteOutputError` naming ``stage`` when ``values`` hold NaN or Inf."""
    if not np.isfinite(values).all():
        raise NonFiniteOutputError(
            f"{stage} produced non-finite values (NaN/Inf): the weights may be damaged or the "
            "precision too low for them; try --precision fp32 or other weights"
        )
