"""The latent adversarial loss of VAE A (Wan et al. 2020 §3.1; spec §8.3).

VAE A encodes real old photos (R) and synthetically degraded clean photos (X). A discriminator on
the latent codes is trained to call *synthetic* latents "real" and *real-old* latents "fake"; the
encoder is rewarded when real-old latents pass as "real". The effect is that real and synthetic
old photos share one latent space, so the mapping learnt on synthetic pairs transfers to real
photos. Each batch is split by the real/synthetic flag and both groups are cut to the same size.
Under DDP "each batch" is the global batch of the step (the balancing is done on the gathered
flags), so two processes compute exactly what one process with twice the batch computes.
"""

from __future__ import annotations

import torch

from latent_restore.core import dist
from latent_restore.core.losses import lsgan_loss_per_sample


def balanced_masks(is_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the first ``k`` real and the first ``k`` synthetic samples, ``k = min(#real, #synthetic)``.

    Args:
        is_real: ``N`` booleans, True for a real old photo.

    Returns:
        ``(real, synthetic)``: float masks of shape ``N`` (1 = selected); both all-zero when the
        batch lacks one of the groups.
    """
    is_real = is_real.reshape(-1).bool()
    real_rank = torch.cumsum(is_real.long(), 0)
    synthetic_rank = torch.cumsum((~is_real).long(), 0)
    k = torch.minimum(real_rank[-1], synthetic_rank[-1])
    real = is_real & (real_rank <= k)
    synthetic = ~is_real & (synthetic_rank <= k)
    return real.float(), synthetic.float()


def _sample_weights(is_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of this process's samples in the means over the selected real and synthetic samples.

    The selection and the counts come from the step's global batch; the weights are multiplied by
    the number of processes because DDP averages (rather than sums) the ranks' gradients.
    """
    local = is_real.reshape(-1).long()
    flags, positions = dist.gather_global_batch(local)
    world = flags.numel() // max(local.numel(), 1)
    real, synthetic = balanced_masks(flags)
    real = real * (world / real.sum().clamp(min=1.0))
    synthetic = synthetic * (world / synthetic.sum().clamp(min=1.0))
    return real[positions], synthetic[positions]


def _weighted_sum(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # Multiplying (rather than indexing) keeps every sample in the graph, so a batch without a
    # usable pair still runs a backward through the discriminator: DDP needs that on every rank.
    return (values * weights.to(values.dtype)).sum()


def latent_discriminator_loss(verdict: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
    """Loss of the latent discriminator on detached latents: synthetic -> 1, real-old -> 0, averaged.

    Args:
        verdict: ``N x 1 x h x w`` patch verdicts on the latents.
        is_real: ``N`` flags.
    """
    real, synthetic = _sample_weights(is_real)
    loss_synthetic = _weighted_sum(lsgan_loss_per_sample(verdict, True), synthetic)
    loss_real = _weighted_sum(lsgan_loss_per_sample(verdict, False), real)
    return 0.5 * (loss_synthetic + loss_real)


def latent_generator_loss(verdict: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
    """Encoder's latent adversarial loss: real-old latents should be judged "real" (synthetic-like)."""
    real, _ = _sample_weights(is_real)
    return _weighted_sum(lsgan_loss_per_sample(verdict, True), real)
