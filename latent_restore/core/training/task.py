"""The contract between a stage and the shared loop: what to train (:class:`TrainTask`) and what a
step may use (:class:`StepContext`), plus the two helpers every adversarial step needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from latent_restore.core.training.loop import Trainer


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into the parameters of ``modules`` (inputs still get gradients).

    Used for the generator's adversarial term: the discriminator must pass gradients through to
    the fake image without accumulating any of its own.
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class TrainTask:
    """What one stage trains. Subclasses fill the attributes in ``__init__`` and implement :meth:`step`.

    Attributes:
        models: trainable networks by name; the loop moves them to the device, wraps them in DDP,
            checkpoints them and restores them on resume.
        optimizers: optimisers by name; the loop steps all of them once per iteration, after the
            gradients of every micro-batch have been accumulated.
        ema_models: names in ``models`` whose weights get an exponential moving average.
        find_unused_parameters: forwarded to DDP, for tasks whose graph skips parameters.
    """

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema_models: tuple[str, ...] = ()
    find_unused_parameters: bool = False

    def dataset(self) -> Dataset:
        """The training data: items are dicts of tensors; ``set_epoch(epoch)`` is called if present."""
        raise NotImplementedError

    def step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Compute the losses of one micro-batch and call ``ctx.backward`` on each.

        Generator and discriminator updates are simultaneous, as in pix2pixHD: the discriminator
        loss uses the detached fake of this forward, the generator's adversarial term goes through
        a :func:`frozen` discriminator, and the loop steps every optimiser afterwards. This keeps
        gradient accumulation, DDP and gradient scaling uniform across stages.

        Args:
            batch: the collated micro-batch, already on ``ctx.device``.
            ctx: DDP-wrapped models, ``backward``, device and iteration number.

        Returns:
            Scalars to log (detached or not; the loop detaches them). Return the same keys on every
            call: they are averaged across ranks.
        """
        raise NotImplementedError

    def final_weights(self, models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        """Which networks to save at the end, by component name (``latent_restore.weights.Component`` values).

        Args:
            models: ``self.models`` with EMA copies substituted where EMA is on.
        """
        raise NotImplementedError

    def samples(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Images to log (``N x C x H x W`` in [-1, 1]), computed without gradients in eval mode."""
        return {}

    def validate(self, ctx: StepContext) -> dict[str, float]:
        """Validation metrics, called every ``val_every`` iterations on rank 0."""
        return {}


class StepContext:
    """What a task's ``step`` may use: wrapped models, ``backward``, the device and the iteration."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def models(self) -> dict[str, nn.Module]:
        """The task's models as the loop runs them (DDP-wrapped when distributed)."""
        return self._trainer.wrapped

    @property
    def device(self) -> torch.device:
        return self._trainer.device

    @property
    def step(self) -> int:
        """The iteration being computed, counting from 0."""
        return self._trainer.step

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self._trainer.autocast_dtype

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of ``loss`` (averaged over micro-batches, scaled for fp16)."""
        loss = loss.float() / self._trainer.config.grad_accum
        if self._trainer.scaler is not None:
            loss = self._trainer.scaler.scale(loss)
        loss.backward()
