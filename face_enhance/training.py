"""Training task of the SPADE face generator (Wan et al. 2020 §3.4).

The released code ships no face training, so this follows the paper's description and the SPADE
recipe it builds on, with the loss set of the global stage: a conditional multi-scale LSGAN
discriminator that sees the degraded face beside the output, feature matching (x10) and, with
weights, VGG (x10). The generator's residual convolutions train with spectral normalisation (as the
released model did); it is folded into plain weights when the component is saved.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from face_enhance.data import FacePairDataset, face_degradation
from face_enhance.generator import (
    FaceGenerator,
    FaceGeneratorConfig,
    apply_spectral_norm,
    remove_spectral_norm,
)
from latent_restore.core.components import Component
from latent_restore.core.config import ConfigError
from latent_restore.core.degradations import DegradationConfig
from latent_restore.core.discriminators import DiscriminatorConfig, MultiScaleDiscriminator
from latent_restore.core.losses import build_vgg_loss
from latent_restore.core.training import OptimConfig, StepContext, TrainConfig, TrainTask, adam
from latent_restore.core.training.gan import GanLossWeights, conditional_gan_step


@dataclasses.dataclass
class FaceDataConfig:
    """Aligned face pairs.

    Attributes:
        face_dirs: folders of aligned face crops (resized to ``model.load_size``).
        length: samples per (virtual) epoch; ``None``: the number of files.
        with_scratches: keep structured defects in the degradation (off: the global stage removes
            them before faces are enhanced).
        grayscale_prob: probability of a grayscale pair.
        cache: keep decoded, resized faces in memory.
        degradation: degradation ranges; by default the face part of the mix (:func:`face_degradation`).
    """

    face_dirs: list[str] = dataclasses.field(default_factory=list)
    length: int | None = None
    with_scratches: bool = False
    grayscale_prob: float = 0.1
    cache: bool = False
    degradation: DegradationConfig = dataclasses.field(default_factory=face_degradation)


@dataclasses.dataclass
class FaceLossConfig:
    """Loss weights.

    Attributes:
        gan_weight: conditional LSGAN term.
        feat_weight: discriminator feature matching.
        vgg_weight: VGG19 perceptual loss; needs ``vgg_weights``.
        vgg_weights: torchvision ``vgg19`` state dict file; ``None`` skips the perceptual loss.
        l1_weight: plain L1 to the clean face (off by default).
    """

    gan_weight: float = 1.0
    feat_weight: float = 10.0
    vgg_weight: float = 10.0
    vgg_weights: str | None = None
    l1_weight: float = 0.0


@dataclasses.dataclass
class FaceTrainingConfig:
    """Everything ``scripts/train_face.py`` reads.

    Attributes:
        component: weights component to write (a :class:`~latent_restore.core.components.Component` value);
            ``None``: face_256, or face_512 when ``model.load_size`` is 512 or more.
        spectral_norm: train the residual convolutions with spectral normalisation.
    """

    component: str | None = None
    spectral_norm: bool = True
    model: FaceGeneratorConfig = dataclasses.field(default_factory=FaceGeneratorConfig)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    loss: FaceLossConfig = dataclasses.field(default_factory=FaceLossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: FaceDataConfig = dataclasses.field(default_factory=FaceDataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


class FaceTask(TrainTask):
    """Face generator + conditional multi-scale discriminator."""

    ema_models = ("generator",)

    def __init__(self, config: FaceTrainingConfig, device: torch.device) -> None:
        if not config.data.face_dirs:
            raise ConfigError("data.face_dirs is empty")
        self.config = config
        generator = FaceGenerator(config.model)
        if config.spectral_norm:
            apply_spectral_norm(generator)
        channels = config.model.in_channels + config.model.out_channels
        self.models = {
            "generator": generator.to(device),
            "discriminator": MultiScaleDiscriminator.from_config(channels, config.discriminator).to(device),
        }
        self.optimizers = {name: adam(m.parameters(), config.optim) for name, m in self.models.items()}
        self.vgg = build_vgg_loss(config.loss.vgg_weights, config.loss.vgg_weight)
        if self.vgg is not None:
            self.vgg.to(device)

    def dataset(self) -> Dataset:
        data = self.config.data
        return FacePairDataset(
            data.face_dirs,
            self.config.model.load_size,
            data.degradation,
            self.config.train.seed,
            data.length,
            with_scratches=data.with_scratches,
            grayscale_prob=data.grayscale_prob,
            cache=data.cache,
        )

    def step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        degraded, clean = batch["degraded"], batch["clean"]
        fake = ctx.models["generator"](degraded)
        weights = GanLossWeights.pix2pixhd(loss, self.config.discriminator.num_layers)
        result = conditional_gan_step(
            ctx, self.models["discriminator"], degraded, clean, fake, weights, vgg=self.vgg
        )
        return result.logs()

    def samples(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        degraded, clean = batch["degraded"][:4], batch["clean"][:4]
        return {"degraded": degraded, "enhanced": self.models["generator"](degraded), "clean": clean}

    def final_weights(self, models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        generator = remove_spectral_norm(copy.deepcopy(models["generator"])).eval()
        component = self.config.component
        if component is None:
            component = Component.FACE_512 if self.config.model.load_size >= 512 else Component.FACE_256
        return {component: generator}


def build_face_task(config: FaceTrainingConfig, device: torch.device) -> FaceTask:
    return FaceTask(config, device)
