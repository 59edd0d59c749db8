"""The conditional-GAN training step that every image-to-image task shares.

pix2pix (Isola et al. 2017 §3), the latent mapping (Wan et al. 2020 §3.2, through VAE B's decoder),
the face generator and the colorizer all train a generator ``G`` against a conditional
discriminator ``D`` that sees the generator's input beside a real or generated output. One step:

1. ``D`` on the real and the detached fake pairs, as one batch through the (DDP-wrapped) network:
   ``loss_d = (L(D(c, y), 1) + L(D(c, G(c)), 0)) / 2``, back-propagated at once;
2. the generator's adversarial term through the plain, :func:`~.task.frozen` ``D`` so only ``G``
   receives its gradients, plus pix2pixHD feature matching on ``D``'s activations (optional);
3. the reconstruction tail: image L1 and VGG perceptual loss (each optional);
4. the weighted sum of the generator terms, back-propagated.

Written once so that a fix (detaching, batching real and fake, freezing ``D``) reaches every task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

from latent_restore.core.discriminators import split_batch
from latent_restore.core.losses import GanMode, VGGLoss, feature_matching_loss, gan_loss
from latent_restore.core.training.task import StepContext, frozen


class Pix2PixHDLossConfig(Protocol):
    """The loss weights of a pix2pixHD-style task config (the mapping's and the face generator's)."""

    gan_weight: float
    feat_weight: float
    vgg_weight: float
    l1_weight: float


@dataclasses.dataclass(frozen=True)
class GanLossWeights:
    """Which generator terms a conditional-GAN step adds, and with what weight.

    Attributes:
        gan: weight of the adversarial term; with ``gan`` 0 and no feature matching the
            discriminator is neither run nor trained.
        feature_matching: weight of pix2pixHD feature matching; ``None``: the term is not computed
            (a float, 0 included, adds ``g/feat``).
        l1: weight of the image L1 to the target; ``None``: no ``g/l1`` term (a float, 0 included,
            adds it).
        vgg: weight of the VGG perceptual term (used when a VGG loss is passed to the step).
        mode: LSGAN (pix2pixHD, the released code) or vanilla (pix2pix's cross-entropy).
        num_layers: the discriminator's strided layers (feature matching weighs by them).
    """

    gan: float = 1.0
    feature_matching: float | None = None
    l1: float | None = None
    vgg: float = 0.0
    mode: GanMode = GanMode.LSGAN
    num_layers: int = 3

    @classmethod
    def pix2pixhd(cls, loss: Pix2PixHDLossConfig, num_layers: int) -> GanLossWeights:
        """The LSGAN + feature matching + VGG weights of ``loss``; a zero ``l1_weight`` adds no term."""
        return cls(
            gan=loss.gan_weight,
            feature_matching=loss.feat_weight,
            l1=loss.l1_weight or None,
            vgg=loss.vgg_weight,
            num_layers=num_layers,
        )

    @property
    def adversarial(self) -> bool:
        """Whether the discriminator contributes (and so is run and trained) at all."""
        return bool(self.gan or self.feature_matching)


@dataclasses.dataclass
class GanStepResult:
    """What :func:`conditional_gan_step` computed (every loss already back-propagated).

    Attributes:
        loss_d: the discriminator loss; ``None`` when the step was not adversarial.
        terms: the weighted generator terms by log name (``extra_terms`` first, then ``g/gan``,
            ``g/feat``, ``g/l1``, ``g/vgg`` where present).
        total: their sum, the generator loss.
        image_l1: the unweighted mean absolute error of ``fake`` to ``real`` (a metric).
    """

    loss_d: torch.Tensor | None
    terms: dict[str, torch.Tensor]
    total: torch.Tensor
    image_l1: torch.Tensor

    def logs(self, d_key: str = "d/image", metric_key: str = "metric/image_l1") -> dict[str, torch.Tensor]:
        """The scalars a task's ``step`` returns: ``d_key``, the terms, ``g/total`` and ``metric_key``."""
        head = {d_key: self.loss_d} if self.loss_d is not None else {}
        return {**head, **self.terms, "g/total": self.total, metric_key: self.image_l1}


def conditional_gan_step(
    ctx: StepContext,
    discriminator: nn.Module | None,
    condition: torch.Tensor,
    real: torch.Tensor,
    fake: torch.Tensor,
    weights: GanLossWeights,
    *,
    vgg: VGGLoss | None = None,
    extra_terms: Mapping[str, torch.Tensor] | None = None,
    wrapped_name: str = "discriminator",
) -> GanStepResult:
    """One conditional-GAN update of discriminator and generator losses (see the module docstring).

    Args:
        ctx: the step context; ``ctx.models[wrapped_name]`` (DDP-wrapped when distributed) computes
            the discriminator loss.
        discriminator: the same discriminator unwrapped (the task's own module), frozen for the
            generator's terms; ``None`` only where ``weights`` is not adversarial.
        condition: the generator's input ``N x C x H x W``, shown to the discriminator.
        real: the target ``N x C' x H x W``.
        fake: the generator's output ``N x C' x H x W`` (with its graph).
        weights: which terms, with which weights.
        vgg: perceptual loss, added as ``g/vgg`` with ``weights.vgg`` when given.
        extra_terms: the task's own generator terms (already weighted, e.g. the mapping's latent
            L1), summed first.
        wrapped_name: the discriminator's name in ``ctx.models``.

    Returns:
        The losses, back-propagated: ``loss_d`` once, then the generator's total once.
    """
    terms: dict[str, torch.Tensor] = dict(extra_terms or {})
    loss_d = None
    if weights.adversarial:
        n = condition.shape[0]
        pairs = torch.cat([torch.cat([condition, real], 1), torch.cat([condition, fake.detach()], 1)])
        real_out, fake_out = split_batch(ctx.models[wrapped_name](pairs), [n, n])
        loss_d = 0.5 * (gan_loss(real_out, True, weights.mode) + gan_loss(fake_out, False, weights.mode))
        ctx.backward(loss_d)
        if discriminator is None:
            raise ValueError("an adversarial step needs its discriminator")
        with frozen(discriminator):
            fake_features = discriminator(torch.cat([condition, fake], 1))
            terms["g/gan"] = gan_loss(fake_features, True, weights.mode) * weights.gan
            if weights.feature_matching is not None:
                terms["g/feat"] = feature_matching_loss(
                    fake_features, real_out, weights.feature_matching, weights.num_layers
                )
    image_l1 = (fake.float() - real.float()).abs().mean()
    if weights.l1 is not None:
        terms["g/l1"] = image_l1 * weights.l1
    if vgg is not None:
        terms["g/vgg"] = vgg(fake, real) * weights.vgg
    total = torch.stack(list(terms.values())).sum()
    ctx.backward(total)
    return GanStepResult(loss_d, terms, total, image_l1)
