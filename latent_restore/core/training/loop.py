"""The :class:`Trainer`: device and DDP, accumulation, autocast, EMA, schedule, checkpoints, resume.

Counting is in iterations: the data is a virtual sequence of epochs whose order depends only on
(seed, epoch), so "step k" names the same batches whatever happened before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from latent_restore.core import dist
from latent_restore.core.atomic import remove_stale_temporaries
from latent_restore.core.checkpoint import save_component
from latent_restore.core.device import Precision
from latent_restore.core.training.checkpoints import (
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    CheckpointUnusable,
    TrainingRefused,
    keep_previous,
    read_checkpoint,
    same_path,
    save_atomic,
)
from latent_restore.core.training.config import TrainConfig, lr_factor
from latent_restore.core.training.run_logging import RunLogger
from latent_restore.core.training.state import EMA, rng_state, seed_everything, set_rng_state
from latent_restore.core.training.task import StepContext, TrainTask

logger = logging.getLogger(__name__)


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
        auto = resume == "auto" or same_path(resume, self.checkpoint_path)
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
