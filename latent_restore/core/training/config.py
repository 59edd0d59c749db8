"""Settings of the shared training loop: precision, optimiser and the loop's own config.

Separate from the loop so that stage configs (``VAETrainingConfig.train: TrainConfig``) and YAML
files can be read without importing DDP, tqdm or the run-folder machinery.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from latent_restore.core.config import ConfigError
from latent_restore.core.device import Precision


@dataclasses.dataclass
class OptimConfig:
    """Adam settings; the defaults are the paper's (lr 2e-4, betas 0.5 / 0.999; spec §8.3)."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999


@dataclasses.dataclass
class TrainConfig:
    """Settings of the shared loop, common to every stage.

    Attributes:
        total_steps: optimiser steps (iterations) of the whole run.
        decay_steps: the last ``decay_steps`` iterations decay the learning rate linearly to 0;
            before that it is constant (the paper's ``niter`` / ``niter_decay``, in iterations).
        batch_size: samples per process per micro-batch.
        grad_accum: micro-batches per optimiser step; the effective batch is
            ``batch_size * grad_accum * world_size``.
        num_workers: DataLoader worker processes per rank.
        precision: fp32, bf16 (autocast), fp16 (autocast plus gradient scaling) or fp64 (every
            tensor in float64, for numerical checks; see :class:`Precision`).
        ema_decay: decay of the exponential moving average of the task's generator weights;
            0 disables it. With EMA on, the final weights are the averaged ones.
        seed: seed of initialisation, data order and per-sample degradations.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``.
        log_every: iterations between scalar logs.
        sample_every: iterations between sample image grids (0: never).
        checkpoint_every: iterations between checkpoints (one is always written at the end).
        val_every: iterations between calls of the task's ``validate`` (0: never).
        cpu_threads: torch intra-op threads (0: torch's default). Small CPU runs on a shared
            machine are much faster with 1 than with an oversubscribed default.
    """

    total_steps: int = 200_000
    decay_steps: int = 100_000
    batch_size: int = 4
    grad_accum: int = 1
    num_workers: int = 4
    precision: Precision = Precision.FP32
    ema_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 2000
    checkpoint_every: int = 2000
    val_every: int = 0
    cpu_threads: int = 0

    def __post_init__(self) -> None:
        self.precision = Precision(self.precision)
        if self.total_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train: total_steps, batch_size and grad_accum must be positive")
        if not 0 <= self.decay_steps <= self.total_steps:
            raise ConfigError(f"train.decay_steps must lie in [0, total_steps], got {self.decay_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("train.log_every and train.checkpoint_every must be positive")


def adam(params: Any, optim: OptimConfig, lr_scale: float = 1.0, betas: tuple[float, float] | None = None):
    """Adam with the stage's settings; ``lr_scale`` and ``betas`` serve the TTUR variant."""
    return torch.optim.Adam(params, lr=optim.lr * lr_scale, betas=betas or (optim.beta1, optim.beta2))


def lr_factor(step: int, total_steps: int, decay_steps: int) -> float:
    """Learning-rate factor: 1 for ``total - decay`` iterations, then linear to 0 at ``total`` (spec §8.3)."""
    start = total_steps - decay_steps
    if decay_steps == 0 or step < start:
        return 1.0
    return max(0.0, (total_steps - step) / decay_steps)
