"""Training checkpoints and the run folder's safety rules.

A checkpoint is written atomically; before it replaces ``last.pt`` the old one becomes
``previous.pt``, so an unreadable ``last.pt`` costs one interval. :func:`check_run_dir` refuses to
start a run that would destroy earlier work. Everything here only reads or writes files: the
:class:`~latent_restore.core.training.loop.Trainer` decides when.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from latent_restore.core.atomic import TEMP_PREFIX, TEMP_SUFFIX, write_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "previous.pt"
_CHECKPOINT_KEYS = ("version", "step", "world_size", "models", "optimizers", "schedulers", "ema", "rng")


class TrainingRefused(RuntimeError):
    """A run will not start: starting would destroy earlier work, or there is nothing usable to continue.

    The message names the files concerned and says what to do; entry points print it without a
    traceback.
    """


class CheckpointUnusable(ValueError):
    """A checkpoint file cannot be used to resume; the message says why (empty, truncated, ...)."""


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


def same_path(a: str | os.PathLike[str], b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (``--resume`` may spell the run's own checkpoint differently)."""
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
        if resume is not None and any(same_path(resume, path) for path in checkpoints):
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
    if resume not in (None, "auto") and checkpoints and not any(same_path(resume, p) for p in checkpoints):
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
