"""Our one checkpoint format: per component a ``model.safetensors`` plus a ``config.json``.

``config.json`` names the architecture and holds the constructor config, so loading rebuilds the
network exactly and then loads the tensors strictly. Every mismatch (missing, unexpected or
wrongly shaped tensors) is logged in full and raises: a half-loaded network silently produces
garbage, which is the failure mode of the reference implementation this package replaces.

Loading checks the file before trusting ``config.json``: the tensor names and shapes in the
safetensors header are compared with a network built on the ``meta`` device (no memory), so a
tampered channel count is refused before anything is allocated; and weights holding NaN or Inf
are refused, since they would turn every photo black without an error.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from latent_restore.core.atomic import write_atomic
from latent_restore.core.config import ConfigError, config_from_dict, config_to_dict

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

M = TypeVar("M", bound=nn.Module)

ARCHITECTURES: Mapping[str, str] = MappingProxyType(
    {
        "vae": "stage1_vae.vae:VAE",
        "mapping": "stage2_mapping.mapping:MappingNetwork",
        "mapping_nonlocal": "stage2_mapping.mapping:NonLocalMappingNetwork",
        "mapping_patch_attention": "stage2_mapping.mapping:PatchAttentionMappingNetwork",
        "scratch_detector": "stage2_mapping.scratch_detector:ScratchDetector",
        "face_generator": "face_enhance.generator:FaceGenerator",
        "pix2pix_generator": "latent_restore.pix2pix.generator:Pix2PixGenerator",
        "colorizer": "latent_restore.colorize.network:Colorizer",
    }
)
"""Every architecture a component directory may hold: its ``config.json`` name -> ``"module:Class"``.

The one explicit registry. :func:`load_component` imports a class's module only when a component of
that architecture is loaded, so the core names the networks without importing any stage (the
dependency rule) and no module has to be imported for a registration side effect before loading.
The names are stored in checkpoints and must never change; only the right-hand side follows the
code (``colorizer`` kept its name when the package moved under ``latent_restore``).
"""

_ARCHITECTURES: dict[str, type[nn.Module]] = {}
"""The classes of :data:`ARCHITECTURES` imported so far (filled by :func:`register_architecture`)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the network it is meant for."""


def register_architecture(name: str, config_class: type) -> Callable[[type[M]], type[M]]:
    """Class decorator: declare the ``architecture`` name and config class of a network.

    The decorated class must accept its config dataclass as the only constructor argument and keep
    it as ``self.config``, and :data:`ARCHITECTURES` must list it under ``name`` (refused otherwise,
    so the registry cannot fall behind the code).
    """

    def decorate(cls: type[M]) -> type[M]:
        listed = ARCHITECTURES.get(name)
        if listed != f"{cls.__module__}:{cls.__qualname__}":
            raise ValueError(
                f"{cls.__module__}.{cls.__qualname__} registers as architecture {name!r}, which "
                f"ARCHITECTURES in {__name__} lists as {listed!r}: add or correct the entry there"
            )
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


def diff_shapes(
    expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]]
) -> StateDictDiff:
    """Compare two ``name -> shape`` tables (what a network stores against what a file holds)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [(k, expected[k], given[k]) for k in expected if k in given and expected[k] != given[k]]
    return StateDictDiff(missing, unexpected, mismatched)


def diff_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> StateDictDiff:
    """Compare ``state_dict`` with what ``model`` stores (parameters and persistent buffers)."""
    return diff_shapes(_shapes(model.state_dict()), _shapes(state_dict))


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    # A NaN or Inf anywhere makes the sum non-finite; the sum is one pass without a mask, and
    # only when it is not finite (or overflowed) is the exact check needed.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf (in ``tensors``' order)."""
    return [k for k, v in tensors.items() if not _finite(v)]


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse weights with NaN or Inf: they load fine and then make every output black.

    Args:
        tensors: the state dict to check.
        what: names the component (and file) in the message.

    Raises:
        CheckpointError: naming the first offending tensors.
    """
    bad = non_finite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} tensors in all)" if len(bad) > 5 else "")
        message = (
            f"{what}: non-finite values (NaN or Inf) in tensor {shown}; refusing weights that would "
            "produce black or garbage photos (the file is damaged or came from a diverged training run)"
        )
        logger.error(message)
        raise CheckpointError(message)


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


def architecture_class(name: str) -> type[nn.Module]:
    """The network class of architecture ``name``, importing its module on first use.

    Raises:
        CheckpointError: ``name`` is not in :data:`ARCHITECTURES`.
    """
    if name not in _ARCHITECTURES:
        target = ARCHITECTURES.get(name)
        if target is None:
            raise CheckpointError(f"unknown architecture {name!r} (known: {sorted(ARCHITECTURES)})")
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if _ARCHITECTURES.get(name) is not cls:  # the decorator registers it as its module is imported
            raise TypeError(f"{target} lacks @register_architecture({name!r}, ...)")
    return _ARCHITECTURES[name]


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

    Raises:
        CheckpointError: unreadable files, tensors that do not fit the configured network (found
            from the safetensors header, before the network is allocated), or NaN/Inf weights.
    """
    directory = Path(directory)
    meta = read_config(directory)
    try:
        cls = architecture_class(meta["architecture"])
    except CheckpointError as exc:
        raise CheckpointError(f"{directory}: {exc}") from None
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(f"{directory} holds a {cls.__name__}, expected a {expected.__name__}")
    try:
        config = config_from_dict(cls.config_class, meta["config"])  # type: ignore[attr-defined]
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from exc
    weights = directory / WEIGHTS_NAME
    _check_header(cls, config, weights)
    model = cls(config)
    try:
        tensors = load_file(str(weights), device=str(map_location))
    except FileNotFoundError:
        raise CheckpointError(f"{weights} not found") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    check_finite(tensors, f"component {directory.name} ({weights})")
    load_state_dict_strict(model, tensors, str(weights))
    return model.to(map_location).eval()  # type: ignore[return-value]


def read_header_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header (no tensor is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()
            return {k: tuple(handle.get_slice(k).get_shape()) for k in names}
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _check_header(cls: type[nn.Module], config: Any, weights: Path) -> None:
    """Refuse a file whose tensors do not fit ``cls(config)`` before the network is allocated.

    ``config.json`` decides how much memory the network takes, and it is only a text file: a
    tampered channel count would otherwise allocate gigabytes before the strict load notices.
    The network is built on the ``meta`` device (shapes only), compared with the header, and only
    then built for real. A network that cannot be built on ``meta`` skips this early check (the
    strict load still catches every mismatch).
    """
    given = read_header_shapes(weights)
    try:
        with torch.device("meta"):
            skeleton = cls(config)
    except Exception as exc:  # any construction failure only skips the early check
        logger.debug("%s cannot be built on the meta device (%s); shapes are checked after loading", cls, exc)
        return
    diff = diff_shapes(_shapes(skeleton.state_dict()), given)
    del skeleton
    if diff:
        message = f"{weights} does not fit {cls.__name__} (checked before allocating it):\n{diff.describe()}"
        logger.error(message)
        raise CheckpointError(message)


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
