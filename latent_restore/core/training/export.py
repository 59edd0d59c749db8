"""Weights of a run in progress: the components its checkpoint would end with, written now.

A long stage spans sessions; whenever ``latent-restore eval`` should judge it mid-way (to ship it
as soon as it beats what ships), its latest checkpoint is turned into the same components the run
writes when it ends: the task's :meth:`~latent_restore.core.training.task.TrainTask.final_weights`
of the checkpoint's models, with their EMA copies where the run keeps them. Nothing in the run
folder is changed, so the training can go on while this runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latent_restore.core.checkpoint import save_component
from latent_restore.core.config import ConfigError, load_config
from latent_restore.core.training.checkpoints import read_checkpoint

logger = logging.getLogger(__name__)


def export_weights(
    config_cls: type,
    build_task: Callable[[Any, torch.device], Any],
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    overrides: list[str] | tuple[str, ...] = (),
) -> Path:
    """Write the components of ``run_dir``'s latest checkpoint into ``out_dir``.

    Args:
        config_cls: the run's training config class.
        build_task: the run's task builder.
        run_dir: the run folder (its resolved ``config.yaml`` and ``checkpoints/last.pt``).
        out_dir: where the components go (``out_dir/<component>``).
        overrides: ``a.b=c`` settings applied to the run's config first, for what only inference
            reads (``model.mirror_average=true``); one that changes a shape fails on loading.

    Returns:
        ``out_dir``.
    """
    run = Path(run_dir)
    config = load_config(config_cls, run / "config.yaml", overrides)
    state = read_checkpoint(run / "checkpoints" / "last.pt")
    task = build_task(config, torch.device("cpu"))
    models = dict(task.models)
    try:
        for name, model in models.items():
            model.load_state_dict(state["models"][name])
        for name, ema_state in state["ema"].items():
            models[name].load_state_dict(ema_state)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ConfigError(
            f"the checkpoint of {run} does not fit its config with {list(overrides)}: {detail}"
        ) from exc
    out = Path(out_dir)
    for component, model in task.final_weights(models).items():
        name = str(getattr(component, "value", component))
        save_component(model.eval(), out / name, extra={"trained_steps": int(state["step"])})
        logger.info("step %d: saved %s -> %s", state["step"], name, out / name)
    return out
