"""Random degradation chains: parameter ranges in a typed config, randomness from an injected generator.

The default chain is a documented extension of the released ``online_add_degradation_v2`` (spec
§8.2), in three stages that follow how an old photo came to look the way it does:

1. **Print and ageing**, fixed order, each op with its own probability: film grain, half-tone,
   fading/contrast loss, colour ageing (sepia, yellowing, colour cast), vignetting, paper texture.
   None of these is in the released code; the papers describe them (CVPR 2020 §3.2, TPAMI §4.1).
2. **The v2 chain**: blur, noise, low resolution and JPEG, visited in a random order, each with
   probability 0.7 and v2's ranges. The extension adds motion/defocus blur and Poisson noise as
   further uniform choices.
3. **Structured defects** (scratches, cracks, creases, dust, stains) last, so that the returned
   mask is exact: 1 precisely where the defects changed the image. This matches the released
   mapping data, where the irregular holes are painted into the already degraded input.

:func:`released_v2_config` reproduces stage 2 alone with the released ranges. Grayscale photos
stay grayscale: noise, grain and half-tone use one field for all channels, JPEG encodes one
channel; only a colour-ageing op (or a coloured paper texture on a colour photo) adds colour.

Every sampled op is recorded as ``(name, params)`` with plain JSON-friendly values, and the
stochastic ones carry the ``seed`` of their random field, so :func:`replay_degradation` rebuilds
the exact output from the record.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latent_restore.core.degradations import ops, scratches
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


@dataclass
class DegradationResult:
    """One sampled degradation.

    Attributes:
        image: ``H x W x 3`` uint8 RGB, the degraded photo.
        mask: ``H x W`` float32 in {0, 1}: 1 exactly where the defect stage changed the image.
        params: the applied ops in order as ``(name, params)``; see :func:`replay_degradation`.
    """

    image: np.ndarray
    mask: np.ndarray
    params: list[tuple[str, dict[str, Any]]]


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    low, high = float(bounds[0]), float(bounds[1])
    return float(rng.uniform(low, high)) if high > low else low


def _randint(rng: np.random.Generator, bounds: Sequence[int]) -> int:
    """Uniform integer in ``[low, high]``, both included (Python ``random.randint``, as v2 uses)."""
    return int(rng.integers(int(bounds[0]), int(bounds[1]), endpoint=True))


def _pick(rng: np.random.Generator, choices: Sequence[Any]) -> Any:
    return choices[int(rng.integers(len(choices)))]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


@functools.lru_cache(maxsize=16)
def _texture_paths(directory: str) -> tuple[str, ...]:
    from latent_restore.core.data import list_images

    return tuple(str(p) for p in list_images([directory]))


@functools.lru_cache(maxsize=16)
def _load_texture(path: str) -> np.ndarray:
    from latent_restore.core.data import load_rgb

    texture = load_rgb(path)
    texture.setflags(write=False)
    return texture


def _apply_defect(fn: Callable[..., scratches.Defect]) -> Callable[..., np.ndarray]:
    def apply(image: np.ndarray, rng: np.random.Generator, **params: Any) -> np.ndarray:
        return fn(image, rng, **params).image

    return apply


_DETERMINISTIC: dict[Op, Callable[..., np.ndarray]] = {
    Op.GAUSSIAN_BLUR: ops.gaussian_blur,
    Op.MOTION_BLUR: ops.motion_blur,
    Op.DEFOCUS_BLUR: ops.defocus_blur,
    Op.JPEG: ops.jpeg,
    Op.DOWN_UP: ops.down_up,
    Op.HALFTONE: ops.halftone,
    Op.FADE: ops.fade,
    Op.CONTRAST: ops.adjust_contrast,
    Op.SEPIA: ops.sepia,
    Op.YELLOWING: ops.yellowing,
    Op.COLOUR_CAST: ops.colour_cast,
    Op.VIGNETTE: ops.vignette,
}
_STOCHASTIC: dict[Op, Callable[..., np.ndarray]] = {
    Op.GAUSSIAN_NOISE: ops.gaussian_noise,
    Op.SPECKLE_NOISE: ops.speckle_noise,
    Op.SALT_PEPPER: ops.salt_and_pepper,
    Op.POISSON_NOISE: ops.poisson_noise,
    Op.FILM_GRAIN: ops.film_grain,
    Op.SCRATCHES: _apply_defect(scratches.add_scratches),
    Op.CRACKS: _apply_defect(scratches.add_cracks),
    Op.CREASES: _apply_defect(scratches.add_creases),
    Op.DUST: _apply_defect(scratches.add_dust),
    Op.STAINS: _apply_defect(scratches.add_stains),
}


def apply_op(name: Op | str, image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Apply one recorded op; ``params`` as :func:`sample_degradation` records them (with ``seed`` if random).

    Args:
        name: an :class:`Op` or its value.
        image: ``H x W x 3`` uint8 RGB.
        params: the op's keyword arguments (plus ``seed`` / ``texture`` where the op needs them).

    Returns:
        ``H x W x 3`` uint8 RGB.
    """
    op = Op(name)
    kwargs = dict(params)
    if op is Op.PAPER_TEXTURE:
        texture = _load_texture(kwargs.pop("texture"))
        return ops.paper_texture(image, texture, **kwargs)
    if op in _STOCHASTIC:
        rng = np.random.default_rng(kwargs.pop("seed"))
        return _STOCHASTIC[op](image, rng=rng, **kwargs)
    return _DETERMINISTIC[op](image, **kwargs)


def _draw_grain(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.grain
    if rng.random() >= c.prob:
        return None
    return Op.FILM_GRAIN, {
        "strength": _uniform(rng, c.strength),
        "grain_size": _uniform(rng, c.grain_size),
        "monochrome": ops.is_grayscale(image),
        "seed": _seed(rng),
    }


def _draw_halftone(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.halftone
    if rng.random() >= c.prob:
        return None
    return Op.HALFTONE, {
        "cell_size": _uniform(rng, c.cell_size),
        "angle": _uniform(rng, c.angle),
        "strength": _uniform(rng, c.strength),
        "monochrome": ops.is_grayscale(image),
    }


def _draw_tone(rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    c = cfg.tone
    if rng.random() >= c.prob:
        return None
    kind = Op(_pick(rng, c.kinds))
    if kind is Op.FADE:
        return kind, {"amount": _uniform(rng, c.fade_amount)}
    return kind, {"factor": _uniform(rng, c.contrast_factor), "brightness": _uniform(rng, c.brightness)}


def _draw_colour(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.colour
    if rng.random() >= c.prob:
        return None
    kind = Op(_pick(rng, c.kinds))
    if kind is Op.SEPIA:
        return kind, {"strength": _uniform(rng, c.sepia_strength)}
    if kind is Op.YELLOWING:
        return kind, {"amount": _uniform(rng, c.yellowing_amount)}
    gains = np.array([_uniform(rng, c.cast_gain) for _ in range(3)])
    gains /= float(gains @ ops.LUMA_WEIGHTS)
    return kind, {"gains": [float(g) for g in gains]}


def _draw_vignette(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.vignette
    if rng.random() >= c.prob:
        return None
    return Op.VIGNETTE, {"strength": _uniform(rng, c.strength), "inner_radius": _uniform(rng, c.inner_radius)}


def _draw_texture(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.texture
    if c.directory is None or rng.random() >= c.prob:
        return None
    paths = _texture_paths(str(Path(c.directory)))
    if not paths:
        raise FileNotFoundError(f"no texture images in {c.directory}")
    return Op.PAPER_TEXTURE, {
        "texture": _pick(rng, paths),
        "strength": _uniform(rng, c.strength),
        "offset_x": float(rng.random()),
        "offset_y": float(rng.random()),
        "monochrome": ops.is_grayscale(image),
    }


def _draw_blur(rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    c = cfg.blur
    if rng.random() >= c.prob:
        return None
    kind = Op(_pick(rng, c.kinds))
    if kind is Op.GAUSSIAN_BLUR:
        return kind, {"kernel_size": int(_pick(rng, c.kernel_sizes)), "sigma": _uniform(rng, c.sigma)}
    if kind is Op.MOTION_BLUR:
        return kind, {"length": _randint(rng, c.motion_length), "angle": _uniform(rng, (0.0, 180.0))}
    return kind, {"radius": _uniform(rng, c.defocus_radius)}


def _draw_noise(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.noise
    if rng.random() >= c.prob:
        return None
    kind = Op(_pick(rng, c.kinds))
    params: dict[str, Any]
    if kind in (Op.GAUSSIAN_NOISE, Op.SPECKLE_NOISE):
        params = {"sigma": _uniform(rng, c.sigma)}
    elif kind is Op.SALT_PEPPER:
        params = {
            "amount": _uniform(rng, c.salt_pepper_amount),
            "salt_fraction": _uniform(rng, c.salt_fraction),
        }
    else:
        low, high = (math.log(v) for v in c.poisson_scale)
        params = {"scale": math.exp(_uniform(rng, (low, high)))}
    params.update(monochrome=ops.is_grayscale(image), seed=_seed(rng))
    return kind, params


def _draw_resize(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.resize
    if rng.random() >= c.prob:
        return None
    return Op.DOWN_UP, {
        "scale_x": _uniform(rng, c.scale),
        "scale_y": _uniform(rng, c.scale),
        "down": Interpolation(_pick(rng, c.down)).value,
        "up": Interpolation(_pick(rng, c.up)).value,
    }


def _draw_jpeg(rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    if rng.random() >= cfg.jpeg.prob:
        return None
    return Op.JPEG, {"quality": _randint(rng, cfg.jpeg.quality)}


_AGEING_STAGE = (_draw_grain, _draw_halftone, _draw_tone, _draw_colour, _draw_vignette, _draw_texture)
_V2_STAGE = (_draw_blur, _draw_noise, _draw_resize, _draw_jpeg)


def _defect_kinds(cfg: DefectConfig) -> list[tuple[Op, Any]]:
    return [
        (Op.SCRATCHES, cfg.scratches),
        (Op.CRACKS, cfg.cracks),
        (Op.CREASES, cfg.creases),
        (Op.DUST, cfg.dust),
        (Op.STAINS, cfg.stains),
    ]


def _draw_defects(rng: np.random.Generator, cfg: DefectConfig, image: np.ndarray) -> list[tuple[Op, dict]]:
    kinds = _defect_kinds(cfg)
    chosen = [rng.random() < sub.prob for _, sub in kinds]
    probs = np.array([sub.prob for _, sub in kinds], dtype=np.float64)
    if cfg.at_least_one and not any(chosen) and probs.sum() > 0:
        chosen[int(rng.choice(len(kinds), p=probs / probs.sum()))] = True
    drawn = []
    for (op, sub), take in zip(kinds, chosen, strict=True):
        if not take:
            continue
        params = {k: v for k, v in dataclasses.asdict(sub).items() if k not in ("prob", "count")}
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
        params["count"] = _randint(rng, sub.count)
        if op is Op.STAINS:
            params["monochrome"] = ops.is_grayscale(image)
        params["seed"] = _seed(rng)
        drawn.append((op, params))
    return drawn


def sample_degradation(
    image: np.ndarray, rng: np.random.Generator, config: DegradationConfig | None = None
) -> DegradationResult:
    """Degrade ``image`` with a chain drawn from ``config`` using ``rng`` only.

    Args:
        image: ``H x W x 3`` uint8 RGB (any size, 1 x 1 included).
        rng: the only source of randomness; the same generator state gives the same result.
        config: ranges and probabilities; defaults to :class:`DegradationConfig` ().

    Returns:
        A :class:`DegradationResult` with an image of the input's shape and dtype and an
        ``H x W`` float32 defect mask (all zero when no defect was drawn).
    """
    ops.check_image(image)
    config = DegradationConfig() if config is None else config
    params: list[tuple[str, dict[str, Any]]] = []
    current = image

    def run(drawn: tuple[Op, dict] | None) -> None:
        nonlocal current
        if drawn is not None:
            op, op_params = drawn
            current = apply_op(op, current, op_params)
            params.append((op.value, op_params))

    for draw in _AGEING_STAGE:
        run(draw(rng, config, current))
    order = rng.permutation(len(_V2_STAGE)) if config.shuffle else range(len(_V2_STAGE))
    for index in order:
        run(_V2_STAGE[int(index)](rng, config, current))
    before_defects = current
    if config.defects.enabled:
        for drawn in _draw_defects(rng, config.defects, current):
            run(drawn)
    return DegradationResult(current, scratches.change_mask(before_defects, current), params)


def replay_degradation(
    image: np.ndarray, params: Sequence[tuple[str, Mapping[str, Any]]]
) -> DegradationResult:
    """Re-apply a recorded chain (``DegradationResult.params``) to ``image``, bit-identical to the run."""
    ops.check_image(image)
    current = image
    before_defects = None
    for name, op_params in params:
        if Op(name) in DEFECT_OPS and before_defects is None:
            before_defects = current
        current = apply_op(name, current, op_params)
    if before_defects is None:
        before_defects = current
    return DegradationResult(
        current, scratches.change_mask(before_defects, current), [(n, dict(p)) for n, p in params]
    )
