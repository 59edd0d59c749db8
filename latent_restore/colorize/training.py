"""Training task of the colorization stage: L -> ab, first with L1 alone, then with a PatchGAN.

Phase ``pretrain`` regresses the normalised ab channels with L1. Alone, L1 (like any per-pixel
regression) averages the plausible colours of an object and gives desaturated, sepia-like results
(Zhang et al. 2016 §1; Isola et al. 2017 §4.8). Phase ``gan`` continues from the pre-trained
weights (``init_from``) with pix2pix's objective, L1 (lambda = 100) plus a conditional PatchGAN that
sees L beside real or predicted ab, which rewards vivid, locally plausible colours. Pre-training
first keeps the adversarial phase from starting off a random generator, where it is unstable.

Data: clean colour photos (no grayscale augmentation: a gray target would teach the network to
predict no colour), converted to Lab on the device (:mod:`latent_restore.colorize.lab`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from latent_restore.colorize.lab import (
    denormalize_ab,
    lab_to_rgb,
    normalize_ab,
    normalize_lightness,
    rgb_to_lab,
)
from latent_restore.colorize.network import Colorizer, ColorizerConfig
from latent_restore.core.checkpoint import load_component
from latent_restore.core.components import Component
from latent_restore.core.config import ConfigError
from latent_restore.core.data import CleanImageDataset
from latent_restore.core.discriminators import DiscriminatorConfig, MultiScaleDiscriminator
from latent_restore.core.losses import GanMode
from latent_restore.core.training import OptimConfig, StepContext, TrainConfig, TrainTask, adam
from latent_restore.core.training.gan import GanLossWeights, conditional_gan_step

logger = logging.getLogger(__name__)


class ColorizePhase(str, enum.Enum):
    """``pretrain``: L1 only; ``gan``: L1 + conditional PatchGAN, usually from pre-trained weights."""

    PRETRAIN = "pretrain"
    GAN = "gan"


@dataclasses.dataclass
class ColorizeDataConfig:
    """Clean colour photos.

    Attributes:
        clean_dirs: photo folders.
        crop_size: square crop side (a multiple of the network's ``2**depth``).
        length: samples per (virtual) epoch; ``None``: the number of files.
        cache: keep decoded images in memory.
        exclude_held_out: leave the held-out evaluation photos out.
    """

    clean_dirs: list[str] = dataclasses.field(default_factory=list)
    crop_size: int = 256
    length: int | None = None
    cache: bool = False
    exclude_held_out: bool = False


@dataclasses.dataclass
class ColorizeLossConfig:
    """Attributes: l1_weight: weight of the ab L1 (pix2pix's lambda = 100); gan_weight: weight of the
    cGAN term in the ``gan`` phase; gan_mode: vanilla (the paper) or lsgan."""

    l1_weight: float = 100.0
    gan_weight: float = 1.0
    gan_mode: GanMode = GanMode.VANILLA


def patchgan_config() -> DiscriminatorConfig:
    """The 70x70 PatchGAN: 64 base channels, 3 stride-2 layers, one scale."""
    return DiscriminatorConfig(base_channels=64, num_layers=3, num_scales=1)


@dataclasses.dataclass
class ColorizeTrainingConfig:
    """Everything ``scripts/train_colorize.py`` reads.

    Attributes:
        phase: ``pretrain`` or ``gan``.
        init_from: a ``colorize`` component directory to start from (the pre-trained weights for
            the ``gan`` phase); its config must equal ``model``.
    """

    phase: ColorizePhase = ColorizePhase.PRETRAIN
    init_from: str | None = None
    model: ColorizerConfig = dataclasses.field(default_factory=ColorizerConfig)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=patchgan_config)
    loss: ColorizeLossConfig = dataclasses.field(default_factory=ColorizeLossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: ColorizeDataConfig = dataclasses.field(default_factory=ColorizeDataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def split_lab(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB ``N x 3 x H x W`` in [-1, 1] -> normalised ``(L: N x 1 x H x W, ab: N x 2 x H x W)``."""
    lab = rgb_to_lab(((image.float() + 1.0) / 2.0).clamp(0, 1))
    return normalize_lightness(lab[:, :1]), normalize_ab(lab[:, 1:])


def merge_lab(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Normalised L and ab -> RGB in [-1, 1] (out-of-gamut colours clipped; for sample grids)."""
    lab = torch.cat([(lightness.float() + 1.0) * 50.0, denormalize_ab(ab.float())], dim=1)
    return lab_to_rgb(lab) * 2.0 - 1.0


class ColorizeTask(TrainTask):
    """The colorizer, with a conditional PatchGAN in the ``gan`` phase."""

    def __init__(self, config: ColorizeTrainingConfig, device: torch.device) -> None:
        if config.data.crop_size % config.model.multiple:
            raise ConfigError(
                f"data.crop_size must be a multiple of 2**model.depth = {config.model.multiple}"
            )
        self.config = config
        if config.init_from:
            generator = load_component(config.init_from, expected=Colorizer, map_location=device)
            if generator.config != config.model:
                raise ConfigError(
                    f"init_from {config.init_from} has model {generator.config}, not {config.model}"
                )
            logger.info("colorizer initialised from %s", config.init_from)
        else:
            if config.phase is ColorizePhase.GAN:
                logger.warning("gan phase without init_from: starting from random weights")
            generator = Colorizer(config.model)
        self.models = {"generator": generator.to(device)}
        if self.adversarial:
            self.models["discriminator"] = MultiScaleDiscriminator.from_config(3, config.discriminator).to(
                device
            )
        self.optimizers = {name: adam(m.parameters(), config.optim) for name, m in self.models.items()}

    @property
    def adversarial(self) -> bool:
        return self.config.phase is ColorizePhase.GAN and bool(self.config.loss.gan_weight)

    def dataset(self) -> Dataset:
        data = self.config.data
        return CleanImageDataset(
            data.clean_dirs,
            data.crop_size,
            self.config.train.seed,
            data.length,
            grayscale_prob=0.0,
            cache=data.cache,
            exclude_held_out=data.exclude_held_out,
        )

    def step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        with torch.no_grad():
            lightness, ab = split_lab(batch["image"])
        fake = ctx.models["generator"](lightness)
        weights = GanLossWeights(
            gan=loss.gan_weight if self.adversarial else 0.0, l1=loss.l1_weight, mode=loss.gan_mode
        )
        result = conditional_gan_step(ctx, self.models.get("discriminator"), lightness, ab, fake, weights)
        return result.logs(d_key="d/gan", metric_key="metric/ab_l1")

    def samples(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        image = batch["image"][:4]
        lightness, _ = split_lab(image)
        gray = lightness.expand(-1, 3, -1, -1)
        return {
            "gray": gray,
            "colorized": merge_lab(lightness, self.models["generator"](lightness)),
            "clean": image,
        }

    def final_weights(self, models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        return {Component.COLORIZE: models["generator"]}


def build_colorize_task(config: ColorizeTrainingConfig, device: torch.device) -> ColorizeTask:
    return ColorizeTask(config, device)
