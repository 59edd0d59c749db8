"""The one training loop that every stage shares.

A stage describes *what* to train with a small :class:`TrainTask`: its networks and optimisers, a
dataset, one ``step(batch, ctx)`` that computes the losses and hands them to ``ctx.backward``, and
which networks become which weights :class:`~latent_restore.weights.Component` at the end. This
module decides *how*: device and DDP, gradient accumulation, autocast (bf16/fp16 with a gradient
scaler for fp16), EMA of the generator weights, the learning-rate schedule, logging, checkpoints and
exact resume. Keeping that in one place means a fix to resume or DDP reaches every stage at once.

All counting is in iterations (optimiser steps), never epochs: the data is a virtual sequence of
epochs whose order depends only on (seed, epoch), so "step k" names the same batches whatever
happened before, and a resumed run continues exactly where a killed one stopped.

Run folder layout::

    RUN_DIR/config.yaml          resolved config (file + overrides)
    RUN_DIR/command.txt          the command line
    RUN_DIR/train.log            the log of rank 0
    RUN_DIR/logs/scalars.jsonl   one JSON line per logged step (always written)
    RUN_DIR/logs/events.*        TensorBoard scalars and sample grids (when tensorboard is installed)
    RUN_DIR/samples/*.png        sample grids
    RUN_DIR/checkpoints/last.pt  everything needed to resume, written atomically
    RUN_DIR/checkpoints/previous.pt  the checkpoint before it (resume falls back to it)
    RUN_DIR/weights/<component>/ final weights (model.safetensors + config.json)

Nothing in a run folder is lost by accident: :func:`launch` refuses to start afresh in a folder that
holds checkpoints or final weights unless told to (``overwrite``), and to continue from a checkpoint
other than the folder's own. Before each checkpoint replaces ``last.pt``, the one it replaces
becomes ``previous.pt`` (a hard link, renamed into place), so a ``last.pt`` that cannot be read
(truncated, emptied, overwritten by something else) costs one checkpoint interval, not the run:
resume says which file was unusable and why, and continues from ``previous.pt``.

Modules, one concern each: :mod:`.config` (settings), :mod:`.task` (the stage contract),
:mod:`.state` (EMA and RNG states), :mod:`.checkpoints` (checkpoint files and run-folder rules),
:mod:`.run_logging` (scalars, samples, ``train.log``), :mod:`.loop` (the :class:`Trainer`),
:mod:`.launch` (entry points) and :mod:`.gan` (the conditional-GAN step of the image-to-image
tasks). Everything is re-exported here, so
``from latent_restore.core.training import TrainTask`` keeps working.
"""

from __future__ import annotations

from latent_restore.core.device import Precision
from latent_restore.core.training.checkpoints import (
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    CheckpointUnusable,
    TrainingRefused,
    check_run_dir,
    discard_checkpoints,
    keep_previous,
    read_checkpoint,
    save_atomic,
)
from latent_restore.core.training.config import OptimConfig, TrainConfig, adam, lr_factor
from latent_restore.core.training.gan import GanLossWeights, GanStepResult, conditional_gan_step
from latent_restore.core.training.launch import launch
from latent_restore.core.training.loop import Trainer
from latent_restore.core.training.run_logging import RunLogger, setup_logging
from latent_restore.core.training.state import EMA, rng_state, seed_everything, set_rng_state
from latent_restore.core.training.task import StepContext, TrainTask, frozen, unwrap

__all__ = [
    "CHECKPOINT_VERSION",
    "EMA",
    "LAST_CHECKPOINT",
    "PREVIOUS_CHECKPOINT",
    "CheckpointUnusable",
    "GanLossWeights",
    "GanStepResult",
    "OptimConfig",
    "Precision",
    "RunLogger",
    "StepContext",
    "TrainConfig",
    "TrainTask",
    "Trainer",
    "TrainingRefused",
    "adam",
    "check_run_dir",
    "conditional_gan_step",
    "discard_checkpoints",
    "frozen",
    "keep_previous",
    "launch",
    "lr_factor",
    "read_checkpoint",
    "rng_state",
    "save_atomic",
    "seed_everything",
    "set_rng_state",
    "setup_logging",
    "unwrap",
]
