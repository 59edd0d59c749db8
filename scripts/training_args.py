"""Command-line arguments shared by the ``train_*.py`` entry points (argparse stays in scripts/)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latent_restore.core.config import ConfigError
from latent_restore.core.data import NoReadableImagesError
from latent_restore.core.dist import DistributedEnvError
from latent_restore.core.training import TrainingRefused, launch, setup_logging
from latent_restore.core.training.checkpoints import CheckpointUnusable
from latent_restore.core.training.export import export_weights


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every training script shares (``--config``, ``--set``, ``--out``, ``--resume``, ...).

    An existing run folder is never restarted silently: without ``--resume`` or ``--overwrite`` a
    folder holding checkpoints or final weights is refused (see ``latent_restore.core.training``).
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML file with the settings of this run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="run folder (config, logs, checkpoints, weights)")
    p.add_argument(
        "--resume",
        help="'auto' (RUN_DIR/checkpoints/last.pt, else previous.pt, else start) or a checkpoint file",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run folder that holds an earlier run, discarding its checkpoints",
    )
    p.add_argument("--vgg-weights", help="torchvision vgg19 state dict for the perceptual loss")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument(
        "--export-weights",
        metavar="DIR",
        help="do not train: write the components of the run folder's latest checkpoint to DIR "
        "(--set applies to the run's config first, for inference-only settings)",
    )
    return p


def assign(key: str, value: str) -> str:
    """An override that keeps ``value`` a string whatever it looks like (JSON strings are YAML)."""
    return f"{key}={json.dumps(value)}"


def run(
    p: argparse.ArgumentParser,
    args: argparse.Namespace,
    config_cls: type,
    build_task: Callable[[Any, Any], Any],
    extra: list[str],
) -> int:
    """Train with ``--set`` overrides followed by the script's own shorthand ``extra`` overrides.

    Returns:
        0 when training finished. Settings errors exit 2 with the usage; refusals (a run folder
        that would be overwritten, no usable checkpoint, a folder of unreadable images, an
        inconsistent torchrun environment) exit 2 with their message and no traceback.
    """
    if args.export_weights:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            export_weights(config_cls, build_task, args.out, args.export_weights, args.set)
        except (OSError, ConfigError, CheckpointUnusable) as exc:
            p.exit(2, f"{p.prog}: error: {exc}\n")
        return 0
    overrides = [*args.set, *extra]
    if args.vgg_weights:
        overrides.append(assign("loss.vgg_weights", args.vgg_weights))
    try:
        setup_logging(Path(args.out), args.quiet)
        launch(
            config_cls,
            build_task,
            config_path=args.config,
            overrides=overrides,
            out=args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            quiet=args.quiet,
        )
    except ConfigError as exc:
        p.error(str(exc))
    except (TrainingRefused, NoReadableImagesError, DistributedEnvError) as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    return 0
