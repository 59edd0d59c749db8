"""Losses shared by the stages: LSGAN and vanilla GAN, feature matching, the KL term, VGG19 perceptual loss.

Weights and layer choices follow the released training code (spec §8.3). The VGG loss needs
ImageNet weights, which this package never downloads: the user passes a torchvision ``vgg19``
state dict with ``--vgg-weights FILE``; without one the loss is skipped with a warning.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core.discriminators import Features

logger = logging.getLogger(__name__)

VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
"""Weights of relu1_1 .. relu5_1 in the perceptual loss (spec §8.3)."""

VGG19_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
"""torchvision's VGG19 ``features`` ("E"): conv widths, ``M`` = 2x2 max-pool."""

VGG_SLICE_ENDS = (2, 7, 12, 21, 30)
"""Exclusive end indices in ``features`` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1."""


def lsgan_loss(outputs: list[Features] | Features | torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN loss: ``mean((D - 1)^2)`` for real targets, ``mean(D^2)`` for fake ones.

    Accepts one verdict map, one scale's feature list (its last entry is the verdict) or a list of
    scales; the per-scale losses are summed, as in pix2pixHD.
    """
    if isinstance(outputs, torch.Tensor):
        target = torch.ones_like(outputs) if target_is_real else torch.zeros_like(outputs)
        return F.mse_loss(outputs.float(), target.float())
    if outputs and isinstance(outputs[0], torch.Tensor):
        return lsgan_loss(outputs[-1], target_is_real)
    return torch.stack([lsgan_loss(scale[-1], target_is_real) for scale in outputs]).sum()


class GanMode(str, enum.Enum):
    """Adversarial objective: ``vanilla`` (the cross-entropy of Goodfellow et al. 2014, used by pix2pix,
    Isola et al. 2017 eq. 1) or ``lsgan`` (least squares, used by the two-VAE stages)."""

    VANILLA = "vanilla"
    LSGAN = "lsgan"


def vanilla_gan_loss(outputs: list[Features] | Features | torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Binary cross-entropy of verdict logits against all-real or all-fake targets, summed over scales.

    Accepts the same shapes as :func:`lsgan_loss`. For the generator (``target_is_real=True`` on a
    fake) this is the non-saturating ``-log D(x, G(x))`` of Isola et al. 2017 §3.
    """
    if isinstance(outputs, torch.Tensor):
        target = torch.ones_like(outputs) if target_is_real else torch.zeros_like(outputs)
        return F.binary_cross_entropy_with_logits(outputs.float(), target.float())
    if outputs and isinstance(outputs[0], torch.Tensor):
        return vanilla_gan_loss(outputs[-1], target_is_real)
    return torch.stack([vanilla_gan_loss(scale[-1], target_is_real) for scale in outputs]).sum()


def gan_loss(
    outputs: list[Features] | Features | torch.Tensor, target_is_real: bool, mode: GanMode = GanMode.LSGAN
) -> torch.Tensor:
    """:func:`lsgan_loss` or :func:`vanilla_gan_loss` by ``mode``."""
    if GanMode(mode) is GanMode.VANILLA:
        return vanilla_gan_loss(outputs, target_is_real)
    return lsgan_loss(outputs, target_is_real)


def discriminator_loss(real: list[Features], fake: list[Features]) -> torch.Tensor:
    """LSGAN discriminator loss ``(L(real, 1) + L(fake, 0)) / 2`` (spec §8.3)."""
    return 0.5 * (lsgan_loss(real, True) + lsgan_loss(fake, False))


def lsgan_loss_per_sample(verdict: torch.Tensor, target_is_real: torch.Tensor | bool) -> torch.Tensor:
    """Per-sample LSGAN loss of a verdict map ``N x 1 x h x w`` -> ``N``; targets may differ per sample."""
    target = torch.as_tensor(target_is_real, dtype=torch.float32, device=verdict.device)
    target = target.reshape(-1, *([1] * (verdict.dim() - 1))).expand_as(verdict)
    return ((verdict.float() - target) ** 2).flatten(1).mean(dim=1)


def feature_matching_loss(
    fake: list[Features], real: list[Features], weight: float = 10.0, num_layers: int = 3
) -> torch.Tensor:
    """L1 between discriminator activations on fake and (detached) real images (pix2pixHD).

    Sum over scales and intermediate layers (not the verdict) of
    ``L1 * weight * (1 / num_scales) * (4 / (num_layers + 1))`` (spec §8.3).
    """
    scale_weight = 1.0 / len(fake)
    layer_weight = 4.0 / (num_layers + 1)
    total = torch.zeros((), device=fake[0][0].device)
    for fake_scale, real_scale in zip(fake, real, strict=True):
        for f, r in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            total = total + F.l1_loss(f.float(), r.detach().float()) * (weight * scale_weight * layer_weight)
    return total


def kl_loss(latent: torch.Tensor) -> torch.Tensor:
    """``mean(z^2)``: the KL term of a VAE with unit-variance noise (spec §8.3)."""
    return latent.float().pow(2).mean()


class VGG19Features(nn.Module):
    """torchvision's VGG19 convolutional trunk up to relu5_1, returning the five relu*_1 activations.

    Layer indices match torchvision's ``features.<i>``, so its state dict loads directly.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG19_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers[: VGG_SLICE_ENDS[-1]])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        start = 0
        for end in VGG_SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outputs.append(x)
            start = end
        return outputs


def load_vgg19(path: str | os.PathLike[str]) -> VGG19Features:
    """Load a torchvision ``vgg19`` state dict (the whole model, or just ``features.*``) safely.

    Only the trunk up to relu5_1 is kept; every tensor of that trunk must be present with the right
    shape (checked by a strict load), the classifier and deeper layers are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = VGG19Features()
    wanted = model.state_dict().keys()
    trunk = {k: v for k, v in state.items() if k in wanted}
    missing = sorted(set(wanted) - set(trunk))
    if missing:
        raise KeyError(f"{path} is not a torchvision vgg19 state dict: missing {missing[:6]}")
    model.load_state_dict(trunk, strict=True)
    return model.eval().requires_grad_(False)


class VGGLoss(nn.Module):
    """Perceptual loss ``sum_k w_k * L1(VGG_k(x), VGG_k(y))`` at relu1_1..relu5_1 (spec §8.3).

    Computed directly on [-1, 1] images without ImageNet normalisation, as the released code does;
    the target's activations are detached.
    """

    def __init__(self, vgg: VGG19Features, layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS) -> None:
        super().__init__()
        self.vgg = vgg.eval().requires_grad_(False)
        self.layer_weights = tuple(layer_weights)

    def train(self, mode: bool = True) -> VGGLoss:
        """The VGG trunk always stays in eval mode."""
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fake = self.vgg(output)
        with torch.no_grad():
            real = self.vgg(target)
        return sum(
            (
                w * F.l1_loss(f.float(), r.float())
                for w, f, r in zip(self.layer_weights, fake, real, strict=True)
            ),
            torch.zeros((), device=output.device),
        )


def build_vgg_loss(path: str | None, weight: float) -> VGGLoss | None:
    """The VGG loss if weights were supplied and it is weighted; otherwise ``None`` with a warning."""
    if weight == 0:
        return None
    if not path:
        logger.warning(
            "no VGG19 weights given (--vgg-weights FILE): training without the perceptual loss; "
            "the package never downloads weights"
        )
        return None
    logger.info("perceptual loss with VGG19 weights from %s", path)
    return VGGLoss(load_vgg19(path))
