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
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import json
import logging
import math
import os
import pickle
import random
import secrets
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from latent_restore.core import dist
from latent_restore.core.atomic import TEMP_PREFIX, TEMP_SUFFIX, remove_stale_temporaries, write_atomic
from latent_restore.core.checkpoint import save_component
from latent_restore.core.config import ConfigError, dump_config_yaml, load_config

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "previous.pt"
_CHECKPOINT_KEYS = ("version", "step", "world_size", "models", "optimizers", "schedulers", "ema", "rng")
C = TypeVar("C")


class TrainingRefused(RuntimeError):
    """A run will not start: starting would destroy earlier work, or there is nothing usable to continue.

    The message names the files concerned and says what to do; entry points print it without a
    traceback.
    """


class CheckpointUnusable(ValueError):
    """A checkpoint file cannot be used to resume; the message says why (empty, truncated, ...)."""


class Precision(str, enum.Enum):
    """Numeric precision of the forward passes.

    ``bf16`` and ``fp16`` autocast the forward passes (weights and optimiser state stay float32).
    ``fp64`` runs everything in float64: far too slow for real training, it exists for numerical
    checks. Float32 rounding noise is amplified by Adam (whose first steps move every weight by
    about ``lr * sign(grad)``, even where the true gradient is zero, as for a convolution's bias
    in front of an instance norm); in float64 two runs that differ only in summation order (one
    process against DDP, say) end a few steps within ~1e-8 of each other.
    """

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP64 = "fp64"


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


class EMA:
    """Exponential moving average of a network's parameters; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's global RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through the atomic writer: a kill mid-write leaves the old file intact."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def keep_previous(last: Path, previous: Path) -> None:
    """Make ``previous`` hold what ``last`` holds now, atomically, before ``last`` is replaced.

    A hard link renamed over ``previous`` costs nothing whatever the checkpoint's size and leaves
    ``last`` in place, so a kill at any moment leaves a complete ``last`` and a complete (older or
    equal) ``previous``. Where the file system has no hard links the file is copied through the
    atomic writer instead.
    """
    tmp = previous.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        os.link(last, tmp)
    except OSError:
        write_atomic(previous, lambda target: shutil.copyfile(last, target))
        return
    try:
        os.replace(tmp, previous)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint written by :meth:`Trainer.save_checkpoint` (on the CPU, weights only).

    Raises:
        CheckpointUnusable: the file is missing, empty, truncated, not a torch file, or not a
            training checkpoint of this version; the message says which, in one line.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointUnusable("missing") from None
    if size == 0:
        raise CheckpointUnusable("empty file (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, or a legacy pickle
        raise CheckpointUnusable("not a torch checkpoint file (it does not start like one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which must never be done with a file
        # that fails to load safely.
        raise CheckpointUnusable("not a torch checkpoint: its contents do not unpickle as tensors") from None
    except EOFError:
        raise CheckpointUnusable("truncated: the file ends early") from None
    except Exception as exc:  # torch raises many types for damaged files; all mean "unreadable"
        detail = str(exc).strip().split(". ")[0].splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointUnusable(
            f"truncated or damaged ({type(exc).__name__}{': ' + detail if detail else ''})"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in _CHECKPOINT_KEYS):
        raise CheckpointUnusable(f"not a training checkpoint (a {type(state).__name__} without its keys)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointUnusable(
            f"checkpoint version {state['version']!r}, this package reads version {CHECKPOINT_VERSION}"
        )
    return state


def _same_path(a: str | os.PathLike[str], b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


def check_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a run that would destroy the work already in ``run_dir``.

    ``resume=None`` (start afresh) is refused when the folder holds a checkpoint or final weights;
    ``"auto"`` is refused when it holds final weights but no checkpoint to continue from (training
    again from step 0 would replace them); a checkpoint path from elsewhere is refused when the
    folder has checkpoints of its own, which the new run would overwrite. ``overwrite`` allows all
    of these (:func:`discard_checkpoints` then removes the old checkpoints), except deleting the
    very checkpoint ``resume`` names. Only reads: every rank may call it.

    Raises:
        TrainingRefused: with the files at stake and the flags that would proceed.
    """
    checkpoints = [run_dir / "checkpoints" / name for name in (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT)]
    checkpoints = [path for path in checkpoints if path.exists()]
    weights = run_dir / "weights"
    finished = weights.is_dir() and any(weights.iterdir())
    if overwrite and resume == "auto":
        raise TrainingRefused("--overwrite (start afresh) and --resume auto (continue) contradict each other")
    if overwrite:
        if resume is not None and any(_same_path(resume, path) for path in checkpoints):
            raise TrainingRefused(
                f"--overwrite would delete {resume}, the checkpoint --resume names: copy it out of "
                f"{run_dir} first, or drop --overwrite"
            )
        return
    held = [str(path) for path in checkpoints] + ([f"{weights}/ (final weights)"] if finished else [])
    if resume is None and held:
        raise TrainingRefused(
            f"{run_dir} already holds a training run ({', '.join(held)}); starting again would overwrite "
            "it. Continue it with --resume auto, start it afresh with --overwrite (this discards it), "
            "or give another --out"
        )
    if resume == "auto" and finished and not checkpoints:
        raise TrainingRefused(
            f"{run_dir} holds final weights ({weights}) but no checkpoint to continue from; "
            "--resume auto would train again from step 0 and replace them. Train afresh with "
            "--overwrite instead of --resume, or give another --out"
        )
    if resume not in (None, "auto") and checkpoints and not any(_same_path(resume, p) for p in checkpoints):
        raise TrainingRefused(
            f"{run_dir} holds checkpoints of its own ({', '.join(map(str, checkpoints))}), which "
            f"continuing from {resume} would overwrite: add --overwrite to discard them, or give "
            "another --out"
        )


def discard_checkpoints(run_dir: Path) -> None:
    """Remove the checkpoints of an earlier run in ``run_dir`` (``overwrite``), so that a fallback to
    ``previous.pt`` can never resume the discarded run. Final weights stay until this run replaces them.
    """
    removed = []
    for name in (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = run_dir / "checkpoints" / name
        if path.exists():
            path.unlink()
            removed.append(str(path))
    if removed:
        logger.warning("starting afresh as asked (--overwrite): removed %s", ", ".join(removed))


class RunLogger:
    """Scalars to ``logs/scalars.jsonl`` and sample grids to ``samples/*.png``, always; both also to
    TensorBoard when it is installed (the optional ``train`` extra). Only rank 0 creates one.
    """

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.log_dir = run_dir / "logs"
        self.sample_dir = run_dir / "samples"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.scalars_path = self.log_dir / "scalars.jsonl"
        self._truncate_after(resume_step)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed: scalars go to %s only", self.scalars_path)
        else:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=resume_step)

    def _truncate_after(self, step: int | None) -> None:
        """Drop lines a killed run logged after its last checkpoint, so a resumed log reads as one run."""
        if not self.scalars_path.exists():
            return
        if step is None:
            self.scalars_path.unlink()
            return
        kept = [
            line
            for line in self.scalars_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.scalars_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        with open(self.scalars_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def images(self, step: int, images: Mapping[str, torch.Tensor]) -> None:
        from torchvision.utils import make_grid

        for name, batch in images.items():
            grid = make_grid(batch.detach().float().cpu().clamp(-1, 1), nrow=min(8, batch.shape[0]))
            grid = (grid + 1) / 2
            if self.writer is not None:
                self.writer.add_image(name, grid, step)
            self.sample_dir.mkdir(parents=True, exist_ok=True)
            pixels = (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(self.sample_dir / f"{name.replace('/', '_')}_{step:08d}.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _to_device(batch: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """``batch`` on ``device``, its floating-point tensors converted to ``float_dtype`` if given."""
    if isinstance(batch, torch.Tensor):
        if float_dtype is not None and batch.is_floating_point():
            return batch.to(device, float_dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, float_dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, float_dtype) for v in batch)
    return batch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


class Trainer:
    """Runs a :class:`TrainTask` for ``config.total_steps`` iterations in ``run_dir``.

    Args:
        task: the stage's task, with its models already on ``device``.
        config: the loop's settings.
        run_dir: the run folder (see the module docstring).
        device: where to train.
        quiet: no progress bar.
    """

    def __init__(
        self,
        task: TrainTask,
        config: TrainConfig,
        run_dir: str | os.PathLike[str],
        device: torch.device,
        quiet: bool = False,
    ) -> None:
        self.task = task
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = device
        self.quiet = quiet
        self.info = dist.dist_info()
        self.step = 0
        self._batches_per_epoch = 1
        self.checkpoint_path = self.run_dir / "checkpoints" / LAST_CHECKPOINT
        self.previous_path = self.run_dir / "checkpoints" / PREVIOUS_CHECKPOINT
        self._rotate = True
        self.float_dtype = torch.float64 if config.precision is Precision.FP64 else None
        for model in task.models.values():
            model.to(device, self.float_dtype).train()
        self.wrapped: dict[str, nn.Module] = {name: self._wrap(m) for name, m in task.models.items()}
        total, decay = config.total_steps, config.decay_steps
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, decay))
            for name, opt in task.optimizers.items()
        }
        self.autocast_dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(
            config.precision
        )
        self.scaler = torch.amp.GradScaler(device.type) if config.precision is Precision.FP16 else None
        self.ema = (
            {name: EMA(task.models[name], config.ema_decay) for name in task.ema_models}
            if config.ema_decay > 0
            else {}
        )
        self.ctx = StepContext(self)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.info.distributed or not any(p.requires_grad for p in model.parameters()):
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=self.task.find_unused_parameters
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (RNG states of every rank are gathered)."""
        states = [rng_state()]
        if dist.is_initialized():
            states = [None] * self.info.world_size
            torch_dist.all_gather_object(states, rng_state())
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "epoch": self.step * self.config.grad_accum // self._batches_per_epoch,
            "world_size": self.info.world_size,
            "models": {name: m.state_dict() for name, m in self.task.models.items()},
            "optimizers": {name: o.state_dict() for name, o in self.task.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": {name: e.state_dict() for name, e in self.ema.items()},
            "rng": states,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise RuntimeError(f"unsupported checkpoint version {state.get('version')!r}")
        for kind, mine in (
            ("models", self.task.models),
            ("optimizers", self.task.optimizers),
            ("schedulers", self.schedulers),
            ("ema", self.ema),
        ):
            if set(state[kind]) != set(mine):
                raise RuntimeError(f"checkpoint {kind} {sorted(state[kind])} != this run's {sorted(mine)}")
            for name, obj in mine.items():
                obj.load_state_dict(state[kind][name])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if state["world_size"] == self.info.world_size:
            set_rng_state(state["rng"][self.info.rank])
        else:
            logger.warning(
                "checkpoint was written by %d processes, this run has %d: RNG streams restart",
                state["world_size"],
                self.info.world_size,
            )
            seed_everything(self.config.seed + 1000 * self.step + self.info.rank)

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` atomically, after turning the one it replaces into ``previous.pt``.

        After resuming from anything but ``last.pt`` (a fallback because it was unusable, or an
        explicit ``previous.pt``) that file is not rotated: it is overwritten, and ``previous.pt``
        stays the checkpoint this run continued from.
        """
        state = self.state_dict()
        if self.info.is_main:
            if self._rotate and self.checkpoint_path.is_file():
                keep_previous(self.checkpoint_path, self.previous_path)
            save_atomic(state, self.checkpoint_path)
            self._rotate = True
            logger.info("checkpoint at step %d -> %s", self.step, self.checkpoint_path)
        dist.barrier()

    def _check_fits(self, state: Mapping[str, Any]) -> None:
        """Raise :class:`CheckpointUnusable` when ``state`` names other networks than this run's."""
        for kind, mine in (
            ("models", self.task.models),
            ("optimizers", self.task.optimizers),
            ("schedulers", self.schedulers),
            ("ema", self.ema),
        ):
            if not isinstance(state[kind], Mapping) or set(state[kind]) != set(mine):
                theirs = sorted(state[kind]) if isinstance(state[kind], Mapping) else state[kind]
                raise CheckpointUnusable(f"its {kind} {theirs} are not this run's {sorted(mine)}")

    def resume(self, resume: str | None, overwrite: bool = False) -> None:
        """Continue from a checkpoint, or start from step 0.

        Args:
            resume: ``None``: start from step 0; ``"auto"``: the run's ``last.pt``, falling back
                to ``previous.pt`` with a warning naming the unusable file and why, and from step 0
                when there is neither; else a checkpoint file (no fallback, except that naming the
                run's own ``last.pt`` is the same as ``"auto"``).
            overwrite: with ``resume=None``, start from step 0 even though the run folder holds
                checkpoints (:func:`launch` removes them first).

        Raises:
            TrainingRefused: ``resume=None`` in a folder with checkpoints and no ``overwrite``; a
                named checkpoint is missing; no checkpoint is usable (the message lists each with
                its reason and says what to do); or a checkpoint's tensors do not fit this run.
        """
        own = [self.checkpoint_path, self.previous_path]
        if resume is None:
            existing = [str(path) for path in own if path.exists()]
            if existing and not overwrite:
                raise TrainingRefused(
                    f"{', '.join(existing)} exist but no resume was asked for: continue with "
                    "--resume auto, or start afresh with --overwrite (this discards them)"
                )
            return
        auto = resume == "auto" or _same_path(resume, self.checkpoint_path)
        if self.info.is_main and self.checkpoint_path.parent.is_dir():
            remove_stale_temporaries(self.checkpoint_path.parent)
        candidates = own if auto else [Path(resume)]
        if not auto and not candidates[0].is_file():
            raise TrainingRefused(f"checkpoint {resume} not found")
        if auto and not any(path.exists() for path in own):
            logger.info("no checkpoint at %s: starting from scratch", self.checkpoint_path)
            return
        problems: list[str] = []
        for path in candidates:
            try:
                state = read_checkpoint(path)
                self._check_fits(state)
            except CheckpointUnusable as exc:
                problems.append(f"{path}: {exc}")
                continue
            self._load_checkpoint(state, path)
            self._rotate = path == self.checkpoint_path
            if problems and self.info.is_main:
                logger.warning(
                    "checkpoint %s; resumed from %s at step %d instead (the steps after it are computed "
                    "again; the unusable file is replaced at the next checkpoint)",
                    "; ".join(problems),
                    path,
                    self.step,
                )
            logger.info("resumed from %s at step %d", path, self.step)
            return
        listing = "".join(f"\n  {problem}" for problem in problems)
        raise TrainingRefused(
            f"no usable checkpoint to resume from:{listing}\n"
            "To train this run again from step 0, use --overwrite instead of --resume (this discards "
            "the checkpoints above); to continue from another checkpoint, pass --resume PATH; if the "
            "settings changed since they were written, resume with the run's earlier settings."
        )

    def _load_checkpoint(self, state: Mapping[str, Any], path: Path) -> None:
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise TrainingRefused(
                f"checkpoint {path} does not fit this run's networks ({detail}): resume with the settings "
                "it was written with, or start afresh with --overwrite"
            ) from exc

    def _batches(self, loader: DataLoader, sampler: dist.ShardedSampler, dataset: Dataset) -> Iterator[Any]:
        """Micro-batches from the position that ``self.step`` implies, epoch after epoch, forever."""
        per_epoch = self._batches_per_epoch
        if per_epoch == 0:
            raise ValueError(
                f"dataset of {sampler.length} items gives no full batch of {self.config.batch_size} "
                f"per process over {self.info.world_size} processes"
            )
        epoch, within = divmod(self.step * self.config.grad_accum, per_epoch)
        while True:
            sampler.set_position(epoch, within * self.config.batch_size)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            loader.generator.manual_seed(self.config.seed + epoch)
            yield from loader
            epoch, within = epoch + 1, 0

    def _micro_step(self, batch: Any, sync: bool) -> dict[str, torch.Tensor]:
        with contextlib.ExitStack() as stack:
            if not sync:
                for model in self.wrapped.values():
                    if isinstance(model, DistributedDataParallel):
                        stack.enter_context(model.no_sync())
            if self.autocast_dtype is not None:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
            return self.task.step(batch, self.ctx)

    def _optimizer_step(self) -> None:
        for opt in self.task.optimizers.values():
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        for opt in self.task.optimizers.values():
            opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A gradient scaler skips the optimiser step after an overflow; PyTorch then warns that
            # the scheduler stepped first. The skip is intended, the schedule stays in iterations.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for sched in self.schedulers.values():
                sched.step()
        for name, ema in self.ema.items():
            ema.update(self.task.models[name])

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        modes = {name: m.training for name, m in self.task.models.items()}
        for m in self.task.models.values():
            m.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for name, m in self.task.models.items():
                m.train(modes[name])

    def fit(self, resume: str | None = None, overwrite: bool = False) -> Path:
        """Train until ``total_steps``; returns ``RUN_DIR/weights``.

        Args:
            resume: ``None``, ``"auto"`` or a checkpoint path (see :meth:`resume`).
            overwrite: start from step 0 although the run folder holds checkpoints.
        """
        config = self.config
        self.resume(resume, overwrite)
        dataset = self.task.dataset()
        sampler = dist.ShardedSampler(len(dataset), config.seed, self.info.rank, self.info.world_size)
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            generator=torch.Generator(),
        )
        self._batches_per_epoch = len(sampler.indices()) // config.batch_size
        resumed_at = self.step if self.step > 0 else None
        run_logger = RunLogger(self.run_dir, resumed_at) if self.info.is_main else None
        batches = self._batches(loader, sampler, dataset)
        for opt in self.task.optimizers.values():
            opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        count = 0
        progress = tqdm(
            total=config.total_steps,
            initial=self.step,
            disable=self.quiet or not self.info.is_main,
            dynamic_ncols=True,
        )
        tick = time.perf_counter()
        batch = None
        while self.step < config.total_steps:
            for micro in range(config.grad_accum):
                batch = _to_device(next(batches), self.device, self.float_dtype)
                logs = self._micro_step(batch, sync=micro == config.grad_accum - 1)
                for key, value in logs.items():
                    value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                    if not math.isfinite(value) and self.scaler is None:
                        # fp16 runs may see inf now and then (the scaler skips those steps); others
                        # would only spread NaNs into the checkpoint.
                        raise FloatingPointError(f"loss {key} is {value} at step {self.step}")
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
            self._optimizer_step()
            self.step += 1
            progress.update(1)
            if self.step % config.log_every == 0 or self.step == config.total_steps:
                now = time.perf_counter()
                steps = self.step % config.log_every or config.log_every
                values = {k: v / count for k, v in sums.items()}
                values = dist.average_across_ranks(values)
                values["time/step_s"] = (now - tick) / steps
                for name, sched in self.schedulers.items():
                    values[f"lr/{name}"] = sched.get_last_lr()[0]
                if run_logger is not None:
                    run_logger.scalars(self.step, values)
                    progress.set_postfix({k: f"{v:.3g}" for k, v in values.items() if "/" not in k})
                sums, count, tick = {}, 0, time.perf_counter()
            if config.sample_every and self.step % config.sample_every == 0 and run_logger is not None:
                with self._eval_mode():
                    run_logger.images(self.step, self.task.samples(batch, self.ctx))
            if config.val_every and self.step % config.val_every == 0 and run_logger is not None:
                with self._eval_mode():
                    metrics = self.task.validate(self.ctx)
                if metrics:
                    run_logger.scalars(self.step, {f"val/{k}": v for k, v in metrics.items()})
            if self.step % config.checkpoint_every == 0 or self.step == config.total_steps:
                self.save_checkpoint()
        progress.close()
        dist.assert_replicas_in_sync(self.task.models)
        weights_dir = self.run_dir / "weights"
        if self.info.is_main:
            models = dict(self.task.models)
            models.update({name: ema.model for name, ema in self.ema.items()})
            for component, model in self.task.final_weights(models).items():
                name = str(getattr(component, "value", component))
                save_component(model, weights_dir / name, extra={"trained_steps": self.step})
                logger.info("saved %s -> %s", name, weights_dir / name)
        if run_logger is not None:
            run_logger.close()
        dist.barrier()
        return weights_dir


def setup_logging(run_dir: Path | None, quiet: bool = False) -> None:
    """Console: INFO on rank 0 (WARNING with ``quiet``), WARNING elsewhere.

    Rank 0 also writes everything from INFO up to ``RUN_DIR/train.log``, quiet or not: the file is
    the record of the run.
    """
    main = dist.is_main_process()
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if main and not quiet else logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log", encoding="utf-8"))
    fmt = f"%(asctime)s [rank {dist.get_rank()}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING, format=fmt, handlers=handlers, force=True
    )


def launch(
    config_cls: type[C],
    build_task: Callable[[C, torch.device], TrainTask],
    *,
    config_path: str | None,
    overrides: list[str],
    out: str,
    resume: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    argv: list[str] | None = None,
) -> Path:
    """Everything an entry point does after parsing its arguments.

    Resolves the config (defaults, then ``config_path``, then ``overrides``), joins the torchrun job
    if there is one, writes the resolved config and the command line into ``out``, builds the
    stage's task and trains it.

    Args:
        config_cls: the stage's config dataclass; it must have a ``train: TrainConfig`` field.
        build_task: ``(config, device) -> TrainTask``.
        config_path: YAML file or ``None``.
        overrides: ``a.b=c`` assignments.
        out: the run folder.
        resume: ``None``, ``"auto"`` or a checkpoint path.
        overwrite: start afresh in a run folder that holds an earlier run: its checkpoints are
            removed first (its final weights are replaced when this run finishes). Without it, a
            folder with checkpoints or weights is only continued (see :func:`check_run_dir`).
        quiet: no progress bar, warnings only.
        argv: the command line to record (defaults to ``sys.argv``).

    Returns:
        The weights directory of the finished run.

    Raises:
        TrainingRefused: before anything in ``out`` is written, when starting would overwrite an
            earlier run; or when no checkpoint is usable for ``resume``.
    """
    config = load_config(config_cls, config_path, overrides)
    train_config: TrainConfig = config.train  # type: ignore[attr-defined]
    run_dir = Path(out)
    check_run_dir(run_dir, resume, overwrite)
    info = dist.dist_info()
    device = resolve_device(train_config.device, info.local_rank)
    if train_config.cpu_threads > 0:
        torch.set_num_threads(train_config.cpu_threads)
    info = dist.init_distributed(device)
    stack = contextlib.ExitStack()
    try:
        if info.is_main:
            if overwrite:
                discard_checkpoints(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_config_yaml(config), encoding="utf-8")
            command = argv if argv is not None else [sys.executable, *sys.argv]
            (run_dir / "command.txt").write_text(shlex.join(command) + "\n", encoding="utf-8")
        seed_everything(train_config.seed + info.rank)
        if train_config.precision is Precision.FP64:
            # Networks and constants the task creates (frozen helpers included) start in float64.
            stack.enter_context(_default_dtype(torch.float64))
        task = build_task(config, device)
        trainer = Trainer(task, train_config, run_dir, device, quiet=quiet)
        effective = train_config.batch_size * train_config.grad_accum * info.world_size
        logger.info(
            "training %s for %d iterations, effective batch %d (%d x %d accumulation x %d processes) on %s",
            type(task).__name__,
            train_config.total_steps,
            effective,
            train_config.batch_size,
            train_config.grad_accum,
            info.world_size,
            device,
        )
        weights = trainer.fit(resume, overwrite)
        # Leave together: a rank tearing gloo down while another still talks to it aborts the process.
        dist.barrier()
    finally:
        stack.close()
        dist.destroy_distributed()
    return weights


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
