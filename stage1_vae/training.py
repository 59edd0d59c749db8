"""Training task of the two VAEs (Wan et al. 2020 §3.1; spec §8.3).

VAE A learns the old-photo domain from real old photos (R) and synthetic ones (X) together, with a
latent discriminator that aligns R and X in latent space; VAE B learns clean photos (Y). Both use
an image GAN with feature matching, the KL term ``mean(z^2)`` with unit-variance noise added to the
latent before decoding, and (when weights are given) the VGG perceptual loss.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from latent_restore.core.components import Component
from latent_restore.core.config import ConfigError
from latent_restore.core.data import CleanImageDataset
from latent_restore.core.degradations import DegradationConfig
from latent_restore.core.discriminators import DiscriminatorConfig, MultiScaleDiscriminator, split_batch
from latent_restore.core.losses import (
    build_vgg_loss,
    discriminator_loss,
    feature_matching_loss,
    kl_loss,
    lsgan_loss,
)
from latent_restore.core.training import OptimConfig, StepContext, TrainConfig, TrainTask, adam, frozen
from stage1_vae.data import DomainADataset
from stage1_vae.losses import latent_discriminator_loss, latent_generator_loss
from stage1_vae.vae import VAE, VAEConfig


class Domain(str, enum.Enum):
    """Which VAE: A (old photos, real and synthetic) or B (clean photos)."""

    A = "A"
    B = "B"


COMPONENTS = {Domain.A: (Component.VAE_A,), Domain.B: (Component.VAE_B_QUALITY, Component.VAE_B_SCRATCH)}
"""Weights components a run of each domain may write; the first is the default."""


@dataclasses.dataclass
class VAEDataConfig:
    """Training data of a VAE.

    Attributes:
        clean_dirs: clean photo folders (synthetic old photos for A; the whole domain for B).
        real_dirs: real old-photo folders (A only), each drawn equally often.
        crop_size: square crop side; a multiple of the VAE's ``2**num_downsamples``.
        length: samples per (virtual) epoch; ``None``: the number of files.
        real_fraction: probability of a real old photo in domain A (released: 1/2).
        grayscale_prob: probability of a grayscale sample (released: 10 %).
        cache: keep decoded images in memory.
        exclude_held_out: leave the held-out evaluation photos (:mod:`latent_restore.core.splits`)
            out of ``clean_dirs``; each folder must be the root that ``latent-restore eval`` uses.
        degradation: synthetic degradation of domain A's clean photos.
    """

    clean_dirs: list[str] = dataclasses.field(default_factory=list)
    real_dirs: list[str] = dataclasses.field(default_factory=list)
    crop_size: int = 256
    length: int | None = None
    real_fraction: float = 0.5
    grayscale_prob: float = 0.1
    cache: bool = False
    exclude_held_out: bool = False
    degradation: DegradationConfig = dataclasses.field(default_factory=DegradationConfig)


@dataclasses.dataclass
class VAELossConfig:
    """Loss weights (released values by default; spec §8.3).

    Attributes:
        gan_weight: image LSGAN term of the generator.
        feat_weight: discriminator feature matching (``lambda_feat``).
        vgg_weight: VGG19 perceptual loss (``lambda_feat``); needs ``vgg_weights``.
        vgg_weights: torchvision ``vgg19`` state dict file; ``None`` skips the perceptual loss.
        kl_weight: ``mean(z^2)`` (``--kl``).
        latent_gan_weight: latent adversarial term of VAE A.
        l1_weight: plain L1 reconstruction (released ``--Smooth_L1`` option; off by default).
        latent_noise_std: standard deviation of the Gaussian noise added to the latent before
            decoding (released: 1). Lower values trade the smoothness of the latent space for
            sharper, higher-PSNR reconstructions, which short CPU schedules need.

    With ``gan_weight`` and ``feat_weight`` both 0 the image discriminator is neither run nor
    trained, and with ``latent_gan_weight`` 0 neither is VAE A's latent discriminator: a pure
    reconstruction autoencoder costs a fraction of the adversarial recipe.
    """

    gan_weight: float = 1.0
    feat_weight: float = 10.0
    vgg_weight: float = 10.0
    vgg_weights: str | None = None
    kl_weight: float = 1.0
    latent_gan_weight: float = 1.0
    l1_weight: float = 0.0
    latent_noise_std: float = 1.0

    @property
    def adversarial(self) -> bool:
        """Whether the image discriminator contributes to the generator's loss."""
        return bool(self.gan_weight or self.feat_weight)


@dataclasses.dataclass
class VAETrainingConfig:
    """Everything ``scripts/train_vae.py`` reads from its YAML file and ``--set`` overrides.

    Attributes:
        domain: A or B.
        component: weights component to write: ``vae_a`` for A; ``vae_b_quality`` (default) or
            ``vae_b_scratch`` for B.
    """

    domain: Domain = Domain.A
    component: str | None = None
    model: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    latent_discriminator: DiscriminatorConfig = dataclasses.field(
        default_factory=lambda: DiscriminatorConfig(num_scales=1)
    )
    loss: VAELossConfig = dataclasses.field(default_factory=VAELossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: VAEDataConfig = dataclasses.field(default_factory=VAEDataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


class NoisyVAE(nn.Module):
    """Training view of a :class:`VAE`: one forward returns the latent and the noisy reconstruction.

    DDP synchronises gradients through ``forward`` only, so encoder and decoder must run inside one
    call. The decoder sees ``z + noise_std * eps`` with ``eps ~ N(0, 1)`` (spec §8.3: ``noise_std`` 1).

    Args:
        vae: the network being trained.
        noise_std: standard deviation of the latent noise; 0 gives a deterministic autoencoder.
    """

    def __init__(self, vae: VAE, noise_std: float = 1.0) -> None:
        super().__init__()
        self.vae = vae
        self.noise_std = noise_std

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.vae.encode(image)
        if self.noise_std:
            return latent, self.vae.decode(latent + self.noise_std * torch.randn_like(latent))
        return latent, self.vae.decode(latent)


class VAETask(TrainTask):
    """VAE A or B with its image discriminator (and, for A, the latent discriminator)."""

    ema_models = ("generator",)

    def __init__(self, config: VAETrainingConfig, device: torch.device) -> None:
        if config.data.crop_size % config.model.multiple:
            raise ConfigError(f"data.crop_size must be a multiple of {config.model.multiple}")
        if not config.data.clean_dirs and config.domain is Domain.B:
            raise ConfigError("data.clean_dirs is empty")
        allowed = COMPONENTS[config.domain]
        if config.component is not None and config.component not in allowed:
            raise ConfigError(
                f"component of a domain {config.domain.value} VAE is one of {tuple(c.value for c in allowed)}"
            )
        self.config = config
        self.domain = config.domain
        self.component = allowed[0] if config.component is None else Component(config.component)
        loss = config.loss
        self.models = {
            "generator": NoisyVAE(VAE(config.model), loss.latent_noise_std),
            "discriminator": MultiScaleDiscriminator.from_config(
                config.model.out_channels, config.discriminator
            ),
        }
        if self.domain is Domain.A:
            self.models["latent_discriminator"] = MultiScaleDiscriminator.from_config(
                config.model.latent_channels, config.latent_discriminator
            )
        for model in self.models.values():
            model.to(device)
        self.optimizers = {name: adam(m.parameters(), config.optim) for name, m in self.models.items()}
        self.vgg = build_vgg_loss(loss.vgg_weights, loss.vgg_weight)
        if self.vgg is not None:
            self.vgg.to(device)

    def dataset(self) -> Dataset:
        data, seed = self.config.data, self.config.train.seed
        if self.domain is Domain.A:
            return DomainADataset(
                data.clean_dirs,
                data.real_dirs,
                data.crop_size,
                data.degradation,
                seed,
                data.length,
                real_fraction=data.real_fraction,
                grayscale_prob=data.grayscale_prob,
                cache=data.cache,
                exclude_held_out=data.exclude_held_out,
            )
        return CleanImageDataset(
            data.clean_dirs,
            data.crop_size,
            seed,
            data.length,
            grayscale_prob=data.grayscale_prob,
            cache=data.cache,
            exclude_held_out=data.exclude_held_out,
        )

    def step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        image = batch["image"]
        n = image.shape[0]
        latent, fake = ctx.models["generator"](image)
        logs: dict[str, torch.Tensor] = {}
        terms: dict[str, torch.Tensor] = {"g/kl": kl_loss(latent) * loss.kl_weight}
        discriminators = []

        if loss.adversarial:
            both = ctx.models["discriminator"](torch.cat([image, fake.detach()]))
            real_out, fake_out = split_batch(both, [n, n])
            loss_d = discriminator_loss(real_out, fake_out)
            ctx.backward(loss_d)
            logs["d/image"] = loss_d
            discriminators.append(self.models["discriminator"])

        latent_adversarial = self.domain is Domain.A and bool(loss.latent_gan_weight)
        if latent_adversarial:
            is_real = batch["is_real"]
            verdict = ctx.models["latent_discriminator"](latent.detach())[0][-1]
            loss_ld = latent_discriminator_loss(verdict, is_real)
            ctx.backward(loss_ld)
            logs["d/latent"] = loss_ld
            discriminators.append(self.models["latent_discriminator"])

        with frozen(*discriminators):
            if loss.adversarial:
                fake_features = self.models["discriminator"](fake)
                terms["g/gan"] = lsgan_loss(fake_features, True) * loss.gan_weight
                terms["g/feat"] = feature_matching_loss(
                    fake_features, real_out, loss.feat_weight, self.config.discriminator.num_layers
                )
            if latent_adversarial:
                verdict = self.models["latent_discriminator"](latent)[0][-1]
                terms["g/latent_gan"] = latent_generator_loss(verdict, is_real) * loss.latent_gan_weight
        l1 = (fake.float() - image.float()).abs().mean()
        if loss.l1_weight:
            terms["g/l1"] = l1 * loss.l1_weight
        if self.vgg is not None:
            terms["g/vgg"] = self.vgg(fake, image) * loss.vgg_weight
        loss_g = torch.stack(list(terms.values())).sum()
        ctx.backward(loss_g)
        logs.update(terms)
        logs["g/total"] = loss_g
        logs["metric/recon_l1"] = l1
        return logs

    def samples(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        image = batch["image"][:4]
        return {"input": image, "reconstruction": self.models["generator"].vae(image)}

    def final_weights(self, models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        return {self.component: models["generator"].vae}


def build_task(config: VAETrainingConfig, device: torch.device) -> VAETask:
    return VAETask(config, device)
