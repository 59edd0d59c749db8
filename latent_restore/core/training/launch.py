"""What a training entry point does after parsing its arguments: config, run folder, torchrun, fit."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

from latent_restore.core import dist
from latent_restore.core.config import dump_config_yaml, load_config
from latent_restore.core.device import Precision, resolve_device
from latent_restore.core.training.checkpoints import check_run_dir, discard_checkpoints
from latent_restore.core.training.config import TrainConfig
from latent_restore.core.training.loop import Trainer
from latent_restore.core.training.state import seed_everything
from latent_restore.core.training.task import TrainTask

logger = logging.getLogger(__name__)

C = TypeVar("C")


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
    # auto never picks MPS for training (see latent_restore.core.device); ``device: mps`` still can.
    device = resolve_device(train_config.device, info.local_rank, auto_mps=False)
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
