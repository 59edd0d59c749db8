"""The weights directory: one sub-directory per component, each in our checkpoint format.

``latent-restore convert`` and ``latent-restore download`` write it from the released
checkpoints, the training scripts write it at the end of a run, and the pipeline reads it.
Missing components are fine as long as the mode that needs them is not used.

Which set a command uses is decided here, in one place (:func:`resolve_weights`), in this order:

1. ``--weights DIR`` (or the ``weights_dir`` argument of the Python API);
2. the ``LATENT_RESTORE_WEIGHTS`` environment variable;
3. the authors' released weights fetched by ``latent-restore download`` into the data folder
   (:func:`data_home`, overridable with ``LATENT_RESTORE_HOME``), when they are there;
4. the small built-in demonstration weights shipped with the package.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from latent_restore.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from latent_restore.core.components import Component
from latent_restore.options import Mode

__all__ = [
    "DEFAULT_WEIGHTS_DIR",
    "HOME_ENV",
    "MODES",
    "SOURCE_NAME",
    "WEIGHTS_ENV",
    "Component",
    "ResolvedWeights",
    "WeightSet",
    "WeightsOrigin",
    "available_modes",
    "data_home",
    "default_weights_dir",
    "downloaded_weights_dir",
    "file_sha256",
    "find_weight_sets",
    "resolve_weights",
    "verify_weight_set",
]

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "default_weights"
"""Built-in weights shipped with the package (used when nothing else is found)."""

WEIGHTS_ENV = "LATENT_RESTORE_WEIGHTS"
"""Environment variable naming a weights directory (below ``--weights``, above everything else)."""

HOME_ENV = "LATENT_RESTORE_HOME"
"""Environment variable replacing the per-user data folder (where ``download`` puts its set)."""

OFFICIAL_SET_NAME = "official"
SOURCE_NAME = "source.json"
"""Provenance written beside the components by ``convert``/``download`` (archives' SHA-256, ...)."""

MODES: dict[str, tuple[Component, ...]] = {
    "quality": Mode.QUALITY.components(),
    "scratch": Mode.SCRATCH.components(),
    "HR": Mode.HR.components(),
    "faces 256": (Component.FACE_256,),
    "faces 512": (Component.FACE_512,),
    "colorize": (Component.COLORIZE,),
    "pix2pix": (Component.PIX2PIX,),
}
"""What each mode of ``latent-restore run`` needs (the same rule as the pipeline's check)."""


class WeightsOrigin(str, enum.Enum):
    """Where a resolved weights directory came from (highest priority first)."""

    ARGUMENT = "--weights"
    ENVIRONMENT = WEIGHTS_ENV
    DOWNLOADED = "downloaded official weights"
    BUILT_IN = "built-in demonstration weights"


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights directory and why it was chosen."""

    path: Path
    origin: WeightsOrigin


def default_weights_dir() -> Path | None:
    """The built-in weights directory, or None when this installation has none."""
    return DEFAULT_WEIGHTS_DIR if _has(DEFAULT_WEIGHTS_DIR, Component.VAE_A) else None


def data_home() -> Path:
    """The per-user data folder of latent-restore (``download`` writes the released set here).

    ``$LATENT_RESTORE_HOME`` if set; otherwise the platform's convention: ``%LOCALAPPDATA%`` on
    Windows, ``~/Library/Application Support`` on macOS, ``$XDG_DATA_HOME`` (default
    ``~/.local/share``) elsewhere; each followed by ``latent-restore``.
    """
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        # The XDG spec says a relative value is invalid and must be ignored.
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "latent-restore"


def downloaded_weights_dir() -> Path:
    """Where ``latent-restore download`` writes the released weights by default."""
    return data_home() / OFFICIAL_SET_NAME


def _has(directory: Path, component: Component) -> bool:
    return (directory / component.value / CONFIG_NAME).is_file()


def available_modes(directory: str | os.PathLike[str]) -> list[str]:
    """The modes of :data:`MODES` whose every component ``directory`` holds."""
    directory = Path(directory)
    return [mode for mode, needs in MODES.items() if all(_has(directory, c) for c in needs)]


def resolve_weights(explicit: str | os.PathLike[str] | None = None) -> ResolvedWeights | None:
    """Pick the weights directory a command uses, and say once in the log which one it is.

    Args:
        explicit: ``--weights`` (or the Python API's ``weights_dir``); used as given, even when it
            is not a weights directory (loading then says what is wrong with it).

    Returns:
        The chosen directory and its origin, or None when there is none at all (an installation
        without built-in weights, nothing downloaded, nothing given).
    """
    resolved = _resolve(explicit)
    if resolved is None:
        return None
    if resolved.origin is WeightsOrigin.BUILT_IN:
        logger.info(
            "weights: %s (%s: small networks trained on a laptop-class CPU, far below the paper's "
            "models; `latent-restore download` fetches the authors' released weights, which are then "
            "used automatically)",
            resolved.path,
            resolved.origin.value,
        )
    else:
        logger.info("weights: %s (%s)", resolved.path, resolved.origin.value)
    return resolved


def _resolve(explicit: str | os.PathLike[str] | None) -> ResolvedWeights | None:
    if explicit is not None and str(explicit):
        return ResolvedWeights(Path(explicit), WeightsOrigin.ARGUMENT)
    from_env = os.environ.get(WEIGHTS_ENV)
    if from_env:
        return ResolvedWeights(Path(from_env).expanduser(), WeightsOrigin.ENVIRONMENT)
    downloaded = downloaded_weights_dir()
    if _has(downloaded, Component.VAE_A):
        return ResolvedWeights(downloaded, WeightsOrigin.DOWNLOADED)
    built_in = default_weights_dir()
    if built_in is not None:
        return ResolvedWeights(built_in, WeightsOrigin.BUILT_IN)
    return None


@dataclass(frozen=True)
class WeightSet:
    """One weights directory found by :func:`find_weight_sets`.

    Attributes:
        path: the directory.
        origin: how the resolver would reach it.
        modes: the modes it can run (see :data:`MODES`).
        components: the components it holds.
        in_use: whether the resolver picks it now (without ``--weights``).
        source: its ``source.json`` (provenance of converted/downloaded sets), if any.
    """

    path: Path
    origin: WeightsOrigin
    modes: list[str]
    components: list[Component]
    in_use: bool
    source: dict | None


def _read_source(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / SOURCE_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def find_weight_sets(explicit: str | os.PathLike[str] | None = None) -> list[WeightSet]:
    """Every weights set the resolver can reach, in its order of priority (for ``latent-restore weights``)."""
    candidates: list[tuple[Path, WeightsOrigin]] = []
    if explicit is not None and str(explicit):
        candidates.append((Path(explicit), WeightsOrigin.ARGUMENT))
    if os.environ.get(WEIGHTS_ENV):
        candidates.append((Path(os.environ[WEIGHTS_ENV]).expanduser(), WeightsOrigin.ENVIRONMENT))
    candidates.append((downloaded_weights_dir(), WeightsOrigin.DOWNLOADED))
    if default_weights_dir() is not None:
        candidates.append((DEFAULT_WEIGHTS_DIR, WeightsOrigin.BUILT_IN))
    chosen = _resolve(explicit)
    found = []
    for path, origin in candidates:
        components = [c for c in Component if _has(path, c)]
        if not components and origin is WeightsOrigin.DOWNLOADED:
            continue
        in_use = chosen is not None and chosen.path == path and chosen.origin is origin
        found.append(WeightSet(path, origin, available_modes(path), components, in_use, _read_source(path)))
    return found


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_weight_set(directory: str | os.PathLike[str]) -> list[str]:
    """Compare each component's ``model.safetensors`` with the SHA-256 recorded in ``source.json``.

    Returns:
        One line per problem (a changed or missing file); empty when everything matches.

    Raises:
        FileNotFoundError: the set has no ``source.json`` with recorded hashes.
    """
    directory = Path(directory)
    source = _read_source(directory)
    recorded = (source or {}).get("components")
    if not isinstance(recorded, dict) or not recorded:
        raise FileNotFoundError(f"{directory} has no {SOURCE_NAME} with recorded hashes")
    problems = []
    for name, entry in sorted(recorded.items()):
        path = directory / name / WEIGHTS_NAME
        if not path.is_file():
            problems.append(f"{name}: {path} is missing")
        elif file_sha256(path) != entry.get("sha256"):
            problems.append(f"{name}: {path} differs from what was converted (SHA-256 mismatch)")
    return problems
