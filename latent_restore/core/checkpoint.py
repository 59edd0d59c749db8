"""Our one checkpoint format: per component a ``model.safetensors`` plus a ``config.json``.

``config.json`` names the architecture and holds the constructor config, so loading rebuilds the
network exactly and then loads the tensors strictly. Every mismatch (missing, unexpected or
wrongly shaped tensors) is logged in full and raises: a half-loaded network silently produces
garbage, which is the failure mode of the reference implementation this package replaces.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from latent_restore.core.atomic import write_atomic
from latent_restore.core.config import ConfigError, config_from_dict, config_to_dict

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

M = TypeVar("M", bound=nn.Module)

_ARCHITECTURES: dict[str, type[nn.Module]] = {}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the network it is meant for."""


def register_architecture(name: str, config_class: type) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a network loadable by the ``architecture`` name in ``config.json``.

    The decorated class must accept its config dataclass as the only constructor argument and keep
    it as ``self.config``.
    """

    def decorate(cls: type[M]) -> type[M]:
        if name in _ARCHITECTURES and _ARCHITECTURES[name] is not cls:
            raise ValueError(f"architecture {name!r} is registered twice")
        cls.architecture = name  # type: ignore[attr-defined]
        cls.config_class = config_class  # type: ignore[attr-defined]
        _ARCHITECTURES[name] = cls
        return cls

    return decorate


@dataclasses.dataclass
class StateDictDiff:
    """Differences between a network's expected tensors and a given state dict."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        lines = []
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (
                    f", ... ({len(items)} in all)" if len(items) > limit else ""
                )
                lines.append(f"{title} keys: {shown}")
        for key, expected, got in self.mismatched[:limit]:
            lines.append(f"shape mismatch for {key}: network expects {list(expected)}, file has {list(got)}")
        if len(self.mismatched) > limit:
            lines.append(f"... {len(self.mismatched)} shape mismatches in all")
        return "\n".join(lines)


def diff_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> StateDictDiff:
    """Compare ``state_dict`` with what ``model`` stores (parameters and persistent buffers)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(state_dict[k].shape))
        for k in expected
        if k in state_dict and tuple(expected[k].shape) != tuple(state_dict[k].shape)
    ]
    return StateDictDiff(missing, unexpected, mismatched)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` only if keys and shapes match exactly; otherwise log and raise."""
    diff = diff_state_dict(model, state_dict)
    if diff:
        message = f"{source} does not fit {type(model).__name__}:\n{diff.describe()}"
        logger.error(message)
        raise CheckpointError(message)
    model.load_state_dict(dict(state_dict), strict=True)


def save_component(
    model: nn.Module, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (a registered architecture) as ``directory/{model.safetensors,config.json}``.

    Each file is written to a temporary name and renamed, so an interrupted save never leaves a
    truncated checkpoint behind. ``extra`` is stored under ``"extra"`` in ``config.json`` (for
    provenance such as the source file of a conversion); it never affects loading. Floating-point
    tensors are stored as float32 whatever precision the model is in (a float64 training run, say).
    """
    architecture = getattr(type(model), "architecture", None)
    if architecture is None:
        raise TypeError(f"{type(model).__name__} is not a registered architecture")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    write_atomic(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": config_to_dict(model.config),
    }
    if extra:
        meta["extra"] = extra
    text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    write_atomic(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return directory


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check ``config.json`` of a component directory."""
    path = Path(directory) / CONFIG_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: not a latent-restore component directory") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or "architecture" not in meta or "config" not in meta:
        raise CheckpointError(f"{path} lacks 'architecture' or 'config'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def load_component(
    directory: str | os.PathLike[str],
    expected: type[M] | None = None,
    map_location: str | torch.device = "cpu",
) -> M:
    """Rebuild the network described by ``directory/config.json`` and strictly load its weights.

    Args:
        directory: a component directory written by :func:`save_component`.
        expected: if given, the loaded network must be an instance of this class.
        map_location: device for the tensors.

    Returns:
        The network in eval mode.
    """
    directory = Path(directory)
    meta = read_config(directory)
    cls = _ARCHITECTURES.get(meta["architecture"])
    if cls is None:
        raise CheckpointError(
            f"{directory}: unknown architecture {meta['architecture']!r} (known: {sorted(_ARCHITECTURES)})"
        )
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(f"{directory} holds a {cls.__name__}, expected a {expected.__name__}")
    try:
        config = config_from_dict(cls.config_class, meta["config"])  # type: ignore[attr-defined]
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from exc
    model = cls(config)
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME), device=str(map_location))
    except FileNotFoundError:
        raise CheckpointError(f"{directory / WEIGHTS_NAME} not found") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {directory / WEIGHTS_NAME}: {exc}") from exc
    load_state_dict_strict(model, tensors, str(directory / WEIGHTS_NAME))
    return model.to(map_location).eval()  # type: ignore[return-value]


def rename_keys(
    state_dict: Mapping[str, torch.Tensor],
    modules: Mapping[str, str],
    inner: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename the module prefixes of ``state_dict`` keys by table (used by the official converters).

    ``modules`` maps a dotted module path of the source (``"model.12"``) to ours (``"blocks.0"``);
    the longest matching prefix wins. ``inner`` then renames dotted segments anywhere below that
    module (``"conv_block.1"`` -> ``"conv1"``). Keys that no rule matches are kept as they are, so
    the strict load afterwards reports them instead of dropping them silently.
    """
    inner = inner or {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        new = key
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in modules:
                rest = "." + ".".join(parts[cut:])
                for old_inner, new_inner in inner.items():
                    rest = rest.replace(f".{old_inner}.", f".{new_inner}.")
                new = modules[prefix] + rest
                break
        if new in out:
            raise CheckpointError(f"two source keys map onto {new}")
        out[new] = value
    return out


def load_renamed(
    model: M,
    state_dict: Mapping[str, torch.Tensor],
    modules: Mapping[str, str],
    source: str,
    inner: Mapping[str, str] | None = None,
    optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
) -> M:
    """Rename ``state_dict`` by table and load it strictly into ``model`` (in eval mode).

    Entries ending in one of ``optional_suffixes`` may be absent from the source (old PyTorch
    versions did not write BatchNorm's ``num_batches_tracked``); the network keeps its own value
    for them. Everything else must match exactly.
    """
    renamed = rename_keys(state_dict, modules, inner)
    for key, value in model.state_dict().items():
        if key not in renamed and key.endswith(optional_suffixes):
            renamed[key] = value
    load_state_dict_strict(model, renamed, source)
    return model.eval()
