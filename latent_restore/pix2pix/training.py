"""Training task of the pix2pix restoration baseline (Isola et al. 2017).

The generator translates a synthetically degraded photo into the clean one. Its objective is the
paper's eq. 4, ``G* = arg min_G max_D L_cGAN(G, D) + lambda * L_L1(G)`` with ``lambda = 100``: the L1
term gets the low frequencies right, and the conditional PatchGAN (a 70x70 receptive field: 3
stride-2 layers) only has to judge local texture, which it does on the degraded input concatenated
with the real or generated output. Both networks are updated every iteration (the shared loop's
simultaneous updates); the discriminator's loss is halved as in the paper (§3.3).

The data are the same synthetic pairs as the latent mapping's, so pix2pix and the two-VAE method
can be compared on equal terms by ``latent-restore eval``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from latent_restore.core.components import Component
from latent_restore.core.config import ConfigError
from latent_restore.core.data import PairedDataConfig
from latent_restore.core.discriminators import DiscriminatorConfig, MultiScaleDiscriminator
from latent_restore.core.losses import GanMode
from latent_restore.core.training import OptimConfig, StepContext, TrainConfig, TrainTask, adam
from latent_restore.core.training.gan import GanLossWeights, conditional_gan_step
from latent_restore.core.unet import UNetConfig
from latent_restore.pix2pix.generator import Pix2PixGenerator


def patchgan_config() -> DiscriminatorConfig:
    """The paper's 70x70 PatchGAN: 64 base channels, 3 stride-2 layers, one scale."""
    return DiscriminatorConfig(base_channels=64, num_layers=3, num_scales=1)


Pix2PixDataConfig = PairedDataConfig
"""Paired training data (:class:`latent_restore.core.data.PairedDataConfig`), the mapping's recipe."""


@dataclasses.dataclass
class Pix2PixLossConfig:
    """Attributes: l1_weight: lambda of eq. 4 (100); gan_weight: weight of the cGAN term; gan_mode:
    vanilla (the paper) or lsgan."""

    l1_weight: float = 100.0
    gan_weight: float = 1.0
    gan_mode: GanMode = GanMode.VANILLA


@dataclasses.dataclass
class Pix2PixTrainingConfig:
    """Everything ``scripts/train_pix2pix.py`` reads."""

    model: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=patchgan_config)
    loss: Pix2PixLossConfig = dataclasses.field(default_factory=Pix2PixLossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: Pix2PixDataConfig = dataclasses.field(default_factory=Pix2PixDataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


class Pix2PixTask(TrainTask):
    """U-Net generator + conditional PatchGAN on (degraded, clean) pairs."""

    def __init__(self, config: Pix2PixTrainingConfig, device: torch.device) -> None:
        if config.data.crop_size % config.model.multiple:
            raise ConfigError(
                f"data.crop_size must be a multiple of 2**model.depth = {config.model.multiple}"
            )
        if config.model.in_channels != 3 or config.model.out_channels != 3:
            raise ConfigError("the pix2pix restorer maps RGB to RGB: model.in_channels = out_channels = 3")
        self.config = config
        generator = Pix2PixGenerator(config.model).to(device)
        self.models = {"generator": generator}
        if config.loss.gan_weight:
            self.models["discriminator"] = MultiScaleDiscriminator.from_config(6, config.discriminator).to(
                device
            )
        self.optimizers = {name: adam(m.parameters(), config.optim) for name, m in self.models.items()}

    def dataset(self) -> Dataset:
        return self.config.data.build(self.config.train.seed, with_mask=False)

    def step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        degraded, clean = batch["degraded"], batch["clean"]
        fake = ctx.models["generator"](degraded)
        weights = GanLossWeights(gan=loss.gan_weight, l1=loss.l1_weight, mode=loss.gan_mode)
        result = conditional_gan_step(ctx, self.models.get("discriminator"), degraded, clean, fake, weights)
        return result.logs(d_key="d/gan")

    def samples(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        degraded, clean = batch["degraded"][:4], batch["clean"][:4]
        return {"degraded": degraded, "restored": self.models["generator"](degraded), "clean": clean}

    def final_weights(self, models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        return {Component.PIX2PIX: models["generator"]}


def build_pix2pix_task(config: Pix2PixTrainingConfig, device: torch.device) -> Pix2PixTask:
    return Pix2PixTask(config, device)
