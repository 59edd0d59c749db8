"""What the degradation sampler may draw: op names, and per op group its probability and ranges.

Every group is a dataclass with a ``prob`` (the gate the sampler draws first) and the ranges of its
parameters; :class:`DegradationConfig` gathers them and round-trips through YAML
(:func:`latent_restore.core.config.config_from_dict`). The chain that uses them is described in
:mod:`latent_restore.core.degradations.sampler`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from latent_restore.core.degradations.ops import Interpolation


class Op(str, enum.Enum):
    """Names of the degradation operations as they appear in configs and recorded params."""

    GAUSSIAN_BLUR = "gaussian_blur"
    MOTION_BLUR = "motion_blur"
    DEFOCUS_BLUR = "defocus_blur"
    GAUSSIAN_NOISE = "gaussian_noise"
    SPECKLE_NOISE = "speckle_noise"
    SALT_PEPPER = "salt_pepper"
    POISSON_NOISE = "poisson_noise"
    FILM_GRAIN = "film_grain"
    JPEG = "jpeg"
    DOWN_UP = "down_up"
    HALFTONE = "halftone"
    FADE = "fade"
    CONTRAST = "contrast"
    SEPIA = "sepia"
    YELLOWING = "yellowing"
    COLOUR_CAST = "colour_cast"
    VIGNETTE = "vignette"
    PAPER_TEXTURE = "paper_texture"
    SCRATCHES = "scratches"
    CRACKS = "cracks"
    CREASES = "creases"
    DUST = "dust"
    STAINS = "stains"


BLUR_OPS = frozenset({Op.GAUSSIAN_BLUR, Op.MOTION_BLUR, Op.DEFOCUS_BLUR})
NOISE_OPS = frozenset({Op.GAUSSIAN_NOISE, Op.SPECKLE_NOISE, Op.SALT_PEPPER, Op.POISSON_NOISE})
TONE_OPS = frozenset({Op.FADE, Op.CONTRAST})
COLOUR_OPS = frozenset({Op.SEPIA, Op.YELLOWING, Op.COLOUR_CAST})
DEFECT_OPS = frozenset({Op.SCRATCHES, Op.CRACKS, Op.CREASES, Op.DUST, Op.STAINS})

Range = tuple[float, float]
IntRange = tuple[int, int]


@dataclass
class BlurConfig:
    """Blur (v2: Gaussian, kernel 3/5/7, sigma U(1, 5)); ``kinds`` is a uniform choice."""

    prob: float = 0.7
    kinds: tuple[Op, ...] = (Op.GAUSSIAN_BLUR, Op.MOTION_BLUR, Op.DEFOCUS_BLUR)
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    sigma: Range = (1.0, 5.0)
    motion_length: IntRange = (3, 11)
    defocus_radius: Range = (1.0, 3.0)


@dataclass
class NoiseConfig:
    """Noise (v2: Gaussian/speckle std U(5, 50)/255, salt & pepper amount U(0, 0.01), salt U(0.3, 0.8))."""

    prob: float = 0.7
    kinds: tuple[Op, ...] = (Op.GAUSSIAN_NOISE, Op.SPECKLE_NOISE, Op.SALT_PEPPER, Op.POISSON_NOISE)
    sigma: Range = (5.0 / 255.0, 50.0 / 255.0)
    salt_pepper_amount: Range = (0.0, 0.01)
    salt_fraction: Range = (0.3, 0.8)
    poisson_scale: Range = (20.0, 1000.0)
    """Photon count of full white, drawn log-uniformly."""


@dataclass
class ResizeConfig:
    """Low resolution (v2: size ``randint(size/2, size)`` per axis, bicubic down, nearest or bilinear up)."""

    prob: float = 0.7
    scale: Range = (0.5, 1.0)
    down: tuple[Interpolation, ...] = (Interpolation.BICUBIC,)
    up: tuple[Interpolation, ...] = (Interpolation.NEAREST, Interpolation.BILINEAR)


@dataclass
class JpegConfig:
    """JPEG re-encoding (v2: quality ``randint(40, 100)``, both ends included)."""

    prob: float = 0.7
    quality: IntRange = (40, 100)


@dataclass
class GrainConfig:
    """Film grain: mid-gray standard deviation and clump size in pixels."""

    prob: float = 0.3
    strength: Range = (0.02, 0.08)
    grain_size: Range = (0.5, 1.5)


@dataclass
class HalftoneConfig:
    """Half-tone screening of printed reproductions: screen period (pixels), angle (degrees), blend."""

    prob: float = 0.1
    cell_size: Range = (3.0, 6.0)
    angle: Range = (0.0, 90.0)
    strength: Range = (0.3, 0.8)


@dataclass
class ToneConfig:
    """Fading (lifted blacks) or contrast loss with a brightness shift; ``kinds`` is a uniform choice."""

    prob: float = 0.5
    kinds: tuple[Op, ...] = (Op.FADE, Op.CONTRAST)
    fade_amount: Range = (0.05, 0.35)
    contrast_factor: Range = (0.55, 0.95)
    brightness: Range = (-0.08, 0.08)


@dataclass
class ColourConfig:
    """Colour ageing: sepia toning, yellowing, or a per-channel cast (gains renormalised to keep the luma)."""

    prob: float = 0.3
    kinds: tuple[Op, ...] = (Op.SEPIA, Op.YELLOWING, Op.COLOUR_CAST)
    sepia_strength: Range = (0.3, 1.0)
    yellowing_amount: Range = (0.2, 0.8)
    cast_gain: Range = (0.8, 1.2)


@dataclass
class VignetteConfig:
    prob: float = 0.2
    strength: Range = (0.1, 0.5)
    inner_radius: Range = (0.3, 0.7)


@dataclass
class TextureConfig:
    """Paper texture overlay from the images in ``directory`` (skipped while ``directory`` is unset)."""

    prob: float = 0.3
    directory: str | None = None
    strength: Range = (0.15, 0.5)


@dataclass
class ScratchConfig:
    prob: float = 0.7
    count: IntRange = (1, 6)
    length: Range = (0.2, 0.9)
    max_width: int = 2
    curvature: float = 0.08
    bright_fraction: float = 0.8
    opacity: Range = (0.5, 1.0)


@dataclass
class CrackConfig:
    prob: float = 0.25
    count: IntRange = (1, 2)
    length: Range = (0.2, 0.6)
    branch_prob: float = 0.06
    jitter: float = 0.35
    step: float = 3.0
    bright_fraction: float = 0.6
    opacity: Range = (0.6, 1.0)


@dataclass
class CreaseConfig:
    prob: float = 0.2
    count: IntRange = (1, 2)
    width: Range = (1.5, 4.0)
    opacity: Range = (0.3, 0.7)
    bright_fraction: float = 0.8


@dataclass
class DustConfig:
    prob: float = 0.5
    count: IntRange = (5, 60)
    max_radius: float = 2.0
    fibre_fraction: float = 0.15
    bright_fraction: float = 0.5
    opacity: Range = (0.5, 1.0)


@dataclass
class StainConfig:
    prob: float = 0.15
    count: IntRange = (1, 3)
    radius: Range = (0.05, 0.2)
    opacity: Range = (0.2, 0.5)
    ring: float = 0.6


@dataclass
class DefectConfig:
    """Structured defects. With ``at_least_one`` an enabled stage always draws at least one kind
    (chosen in proportion to the kinds' probabilities), so "defects on" means a non-empty mask
    except on images too small to hold one."""

    enabled: bool = True
    at_least_one: bool = True
    scratches: ScratchConfig = field(default_factory=ScratchConfig)
    cracks: CrackConfig = field(default_factory=CrackConfig)
    creases: CreaseConfig = field(default_factory=CreaseConfig)
    dust: DustConfig = field(default_factory=DustConfig)
    stains: StainConfig = field(default_factory=StainConfig)


@dataclass
class DegradationConfig:
    """Ranges and probabilities of the degradation chain (see the module docstring for the stages).

    Round-trips through :func:`latent_restore.core.config.config_from_dict` / ``config_to_dict``.
    """

    shuffle: bool = True
    """Visit the v2 ops (blur, noise, resize, JPEG) in a random order, as v2 does."""
    grain: GrainConfig = field(default_factory=GrainConfig)
    halftone: HalftoneConfig = field(default_factory=HalftoneConfig)
    tone: ToneConfig = field(default_factory=ToneConfig)
    colour: ColourConfig = field(default_factory=ColourConfig)
    vignette: VignetteConfig = field(default_factory=VignetteConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    jpeg: JpegConfig = field(default_factory=JpegConfig)
    defects: DefectConfig = field(default_factory=DefectConfig)

    def __post_init__(self) -> None:
        _validate(self)


def released_v2_config() -> DegradationConfig:
    """The released ``online_add_degradation_v2`` (spec §8.2): four ops, random order, p 0.7 each."""
    return DegradationConfig(
        shuffle=True,
        grain=GrainConfig(prob=0.0),
        halftone=HalftoneConfig(prob=0.0),
        tone=ToneConfig(prob=0.0),
        colour=ColourConfig(prob=0.0),
        vignette=VignetteConfig(prob=0.0),
        texture=TextureConfig(prob=0.0),
        blur=BlurConfig(prob=0.7, kinds=(Op.GAUSSIAN_BLUR,)),
        noise=NoiseConfig(prob=0.7, kinds=(Op.GAUSSIAN_NOISE, Op.SPECKLE_NOISE, Op.SALT_PEPPER)),
        resize=ResizeConfig(prob=0.7, scale=(0.5, 1.0), up=(Interpolation.NEAREST, Interpolation.BILINEAR)),
        jpeg=JpegConfig(prob=0.7, quality=(40, 100)),
        defects=DefectConfig(enabled=False),
    )


def with_defects(config: DegradationConfig, enabled: bool) -> DegradationConfig:
    """A copy of ``config`` with the defect stage switched on or off (ranges kept)."""
    return dataclasses.replace(config, defects=dataclasses.replace(config.defects, enabled=enabled))


def _validate(config: DegradationConfig) -> None:
    """Reject impossible settings early, naming the offending field (configs come from YAML)."""
    for name, allowed in (
        ("blur", BLUR_OPS),
        ("noise", NOISE_OPS),
        ("tone", TONE_OPS),
        ("colour", COLOUR_OPS),
    ):
        kinds = {Op(k) for k in getattr(config, name).kinds}
        if not kinds or not kinds <= allowed:
            raise ValueError(f"{name}.kinds must be a non-empty subset of {sorted(k.value for k in allowed)}")
    groups = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "shuffle"}
    groups.update(
        {f"defects.{f.name}": getattr(config.defects, f.name) for f in dataclasses.fields(DefectConfig)}
    )
    for name, group in groups.items():
        if not dataclasses.is_dataclass(group):
            continue
        for f in dataclasses.fields(group):
            value = getattr(group, f.name)
            if f.name == "prob" and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}.prob must be in [0, 1], got {value}")
            if f.type in ("Range", "IntRange") and value[0] > value[1]:
                raise ValueError(f"{name}.{f.name}: low {value[0]} > high {value[1]}")
    if not config.blur.kernel_sizes or any(k < 1 or k % 2 == 0 for k in config.blur.kernel_sizes):
        raise ValueError(f"blur.kernel_sizes must be odd and positive, got {config.blur.kernel_sizes}")
    if not config.resize.down or not config.resize.up:
        raise ValueError("resize.down and resize.up need at least one interpolation each")
