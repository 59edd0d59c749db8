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

The op names and config classes live in :mod:`latent_restore.core.degradations.configs` and are
re-exported here. Every op group passes one probability gate (:func:`_fires`) before its
parameters are drawn, so the order and number of draws are fixed by the config alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latent_restore.core.degradations import ops, scratches
from latent_restore.core.degradations.configs import (
    BLUR_OPS,
    COLOUR_OPS,
    DEFECT_OPS,
    NOISE_OPS,
    TONE_OPS,
    BlurConfig,
    ColourConfig,
    CrackConfig,
    CreaseConfig,
    DefectConfig,
    DegradationConfig,
    DustConfig,
    GrainConfig,
    HalftoneConfig,
    IntRange,
    JpegConfig,
    NoiseConfig,
    Op,
    Range,
    ResizeConfig,
    ScratchConfig,
    StainConfig,
    TextureConfig,
    ToneConfig,
    VignetteConfig,
    released_v2_config,
    with_defects,
)
from latent_restore.core.degradations.ops import Interpolation

__all__ = [
    "BLUR_OPS",
    "COLOUR_OPS",
    "DEFECT_OPS",
    "NOISE_OPS",
    "TONE_OPS",
    "BlurConfig",
    "ColourConfig",
    "CrackConfig",
    "CreaseConfig",
    "DefectConfig",
    "DegradationConfig",
    "DegradationResult",
    "DustConfig",
    "GrainConfig",
    "HalftoneConfig",
    "IntRange",
    "JpegConfig",
    "NoiseConfig",
    "Op",
    "Range",
    "ResizeConfig",
    "ScratchConfig",
    "StainConfig",
    "TextureConfig",
    "ToneConfig",
    "VignetteConfig",
    "apply_op",
    "released_v2_config",
    "replay_degradation",
    "sample_degradation",
    "with_defects",
]


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


def _fires(rng: np.random.Generator, prob: float) -> bool:
    """The probability gate of every op group: one uniform draw, true with probability ``prob``.

    Exactly one draw whatever ``prob`` is (0 and 1 included), so switching a group off or on
    never shifts the draws of the groups after it.
    """
    return bool(rng.random() < prob)


GroupDraw = Callable[[np.random.Generator, Any, np.ndarray], "tuple[Op, dict] | None"]
StageDraw = Callable[[np.random.Generator, DegradationConfig, np.ndarray], "tuple[Op, dict] | None"]


def _gated(group: str) -> Callable[[GroupDraw], StageDraw]:
    """Turn ``draw(rng, group_config, image)`` into a stage draw that first passes the group's gate."""

    def wrap(draw: GroupDraw) -> StageDraw:
        @functools.wraps(draw)
        def gated(
            rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
        ) -> tuple[Op, dict] | None:
            c = getattr(cfg, group)
            if not _fires(rng, c.prob):
                return None
            return draw(rng, c, image)

        return gated

    return wrap


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


@_gated("grain")
def _draw_grain(rng: np.random.Generator, c: GrainConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    return Op.FILM_GRAIN, {
        "strength": _uniform(rng, c.strength),
        "grain_size": _uniform(rng, c.grain_size),
        "monochrome": ops.is_grayscale(image),
        "seed": _seed(rng),
    }


@_gated("halftone")
def _draw_halftone(rng: np.random.Generator, c: HalftoneConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    return Op.HALFTONE, {
        "cell_size": _uniform(rng, c.cell_size),
        "angle": _uniform(rng, c.angle),
        "strength": _uniform(rng, c.strength),
        "monochrome": ops.is_grayscale(image),
    }


@_gated("tone")
def _draw_tone(rng: np.random.Generator, c: ToneConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    kind = Op(_pick(rng, c.kinds))
    if kind is Op.FADE:
        return kind, {"amount": _uniform(rng, c.fade_amount)}
    return kind, {"factor": _uniform(rng, c.contrast_factor), "brightness": _uniform(rng, c.brightness)}


@_gated("colour")
def _draw_colour(rng: np.random.Generator, c: ColourConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    kind = Op(_pick(rng, c.kinds))
    if kind is Op.SEPIA:
        return kind, {"strength": _uniform(rng, c.sepia_strength)}
    if kind is Op.YELLOWING:
        return kind, {"amount": _uniform(rng, c.yellowing_amount)}
    gains = np.array([_uniform(rng, c.cast_gain) for _ in range(3)])
    gains /= float(gains @ ops.LUMA_WEIGHTS)
    return kind, {"gains": [float(g) for g in gains]}


@_gated("vignette")
def _draw_vignette(rng: np.random.Generator, c: VignetteConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    return Op.VIGNETTE, {"strength": _uniform(rng, c.strength), "inner_radius": _uniform(rng, c.inner_radius)}


def _draw_texture(
    rng: np.random.Generator, cfg: DegradationConfig, image: np.ndarray
) -> tuple[Op, dict] | None:
    c = cfg.texture
    if c.directory is None or not _fires(rng, c.prob):
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


@_gated("blur")
def _draw_blur(rng: np.random.Generator, c: BlurConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    kind = Op(_pick(rng, c.kinds))
    if kind is Op.GAUSSIAN_BLUR:
        return kind, {"kernel_size": int(_pick(rng, c.kernel_sizes)), "sigma": _uniform(rng, c.sigma)}
    if kind is Op.MOTION_BLUR:
        return kind, {"length": _randint(rng, c.motion_length), "angle": _uniform(rng, (0.0, 180.0))}
    return kind, {"radius": _uniform(rng, c.defocus_radius)}


@_gated("noise")
def _draw_noise(rng: np.random.Generator, c: NoiseConfig, image: np.ndarray) -> tuple[Op, dict] | None:
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


@_gated("resize")
def _draw_resize(rng: np.random.Generator, c: ResizeConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    return Op.DOWN_UP, {
        "scale_x": _uniform(rng, c.scale),
        "scale_y": _uniform(rng, c.scale),
        "down": Interpolation(_pick(rng, c.down)).value,
        "up": Interpolation(_pick(rng, c.up)).value,
    }


@_gated("jpeg")
def _draw_jpeg(rng: np.random.Generator, c: JpegConfig, image: np.ndarray) -> tuple[Op, dict] | None:
    return Op.JPEG, {"quality": _randint(rng, c.quality)}


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
    chosen = [_fires(rng, sub.prob) for _, sub in kinds]
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
