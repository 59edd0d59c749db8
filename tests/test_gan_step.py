"""The shared conditional-GAN step: which terms it adds, and where its gradients go."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latent_restore.core.discriminators import DiscriminatorConfig, MultiScaleDiscriminator
from latent_restore.core.losses import GanMode, feature_matching_loss, gan_loss
from latent_restore.core.training.gan import GanLossWeights, conditional_gan_step


class _Ctx:
    """The two things the step uses of a StepContext: ``models`` and ``backward``."""

    def __init__(self, models: dict[str, nn.Module]) -> None:
        self.models = models

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def _setup() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    generator = nn.Conv2d(3, 3, 3, padding=1)
    discriminator = MultiScaleDiscriminator.from_config(
        6, DiscriminatorConfig(base_channels=4, num_layers=2, num_scales=2)
    )
    return generator, discriminator, torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1


@pytest.mark.parametrize("mode", list(GanMode))
def test_step_adds_the_asked_terms_and_matches_the_losses(mode: GanMode) -> None:
    generator, discriminator, condition, real = _setup()
    fake = generator(condition)
    weights = GanLossWeights(gan=2.0, feature_matching=10.0, l1=3.0, mode=mode, num_layers=2)
    result = conditional_gan_step(
        _Ctx({"discriminator": discriminator}), discriminator, condition, real, fake, weights
    )
    assert list(result.terms) == ["g/gan", "g/feat", "g/l1"]
    with torch.no_grad():
        real_out = discriminator(torch.cat([condition, real], 1))
        fake_out = discriminator(torch.cat([condition, fake], 1))
        expected_d = 0.5 * (gan_loss(real_out, True, mode) + gan_loss(fake_out, False, mode))
        expected_gan = 2.0 * gan_loss(fake_out, True, mode)
        expected_feat = feature_matching_loss(fake_out, real_out, 10.0, 2)
    torch.testing.assert_close(result.loss_d, expected_d)
    torch.testing.assert_close(result.terms["g/gan"], expected_gan)
    torch.testing.assert_close(result.terms["g/feat"], expected_feat)
    torch.testing.assert_close(result.terms["g/l1"], 3.0 * (fake - real).abs().mean())
    torch.testing.assert_close(result.total, sum(result.terms.values()))
    assert set(result.logs()) == {"d/image", "g/gan", "g/feat", "g/l1", "g/total", "metric/image_l1"}


def test_discriminator_gradients_come_from_its_own_loss_only() -> None:
    generator, discriminator, condition, real = _setup()
    weights = GanLossWeights(gan=1.0, feature_matching=10.0, num_layers=2)
    conditional_gan_step(
        _Ctx({"discriminator": discriminator}), discriminator, condition, real, generator(condition), weights
    )
    with_generator_terms = [p.grad.clone() for p in discriminator.parameters()]
    discriminator.zero_grad(set_to_none=True)
    fake = generator(condition).detach()
    real_out, fake_out = (discriminator(torch.cat([condition, x], 1)) for x in (real, fake))
    (0.5 * (gan_loss(real_out, True) + gan_loss(fake_out, False))).backward()
    for got, want in zip(with_generator_terms, (p.grad for p in discriminator.parameters()), strict=True):
        torch.testing.assert_close(got, want)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


def test_without_adversarial_terms_the_discriminator_is_not_needed() -> None:
    generator, _, condition, real = _setup()
    result = conditional_gan_step(
        _Ctx({}),
        None,
        condition,
        real,
        generator(condition),
        GanLossWeights(gan=0.0, l1=1.0),
        extra_terms={"g/latent_l1": torch.tensor(0.5)},
    )
    assert result.loss_d is None and list(result.terms) == ["g/latent_l1", "g/l1"]
    assert "d/image" not in result.logs()
