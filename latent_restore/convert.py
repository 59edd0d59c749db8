"""Convert a tree of released checkpoints into a latent-restore weights directory.

The input is laid out like the unzipped official archives (any subset may be present)::

    Global/checkpoints/restoration/<name>/latest_net_{G,mapping_net}.pth
    Global/checkpoints/detection/FT_Epoch_latest.pt
    Face_Enhancement/checkpoints/<name>/latest_net_G.pth

Each file is read with ``torch.load(weights_only=True)`` (a pickle that holds anything but tensors
and plain containers is refused), its network family is recognised from its keys, renamed onto our
modules by table and loaded strictly. Only where a family has several roles with identical keys
and shapes (the three VAEs; the two face generators) does the folder name pick the role.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from face_enhance.convert import face_generator_from_official, is_official_face_generator
from latent_restore.core.checkpoint import CheckpointError, save_component
from latent_restore.weights import Component
from stage1_vae.convert import is_official_vae, vae_from_official
from stage2_mapping.convert import (
    detector_from_official,
    is_official_detector,
    is_official_mapping,
    is_official_nonlocal_mapping,
    is_official_patch_attention_mapping,
    mapping_from_official,
    nonlocal_mapping_from_official,
    patch_attention_mapping_from_official,
)

logger = logging.getLogger(__name__)

OFFICIAL_PATTERNS = (
    "Global/checkpoints/restoration/*/*.pth",
    "Global/checkpoints/detection/*.pt",
    "Global/checkpoints/detection/*.pth",
    "Face_Enhancement/checkpoints/*/*.pth",
)


class ConversionError(RuntimeError):
    """A released checkpoint cannot be converted; the message says which file and why."""


StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    """A network family of the released checkpoints.

    Attributes:
        name: human-readable name used in messages.
        matches: recognises the family from a state dict's keys.
        role: picks the component for a file of this family (may look at its folder name when
            the family's roles share keys and shapes).
        build: converts the state dict (and its source path, for messages) into our network for
            the given component (strict).
    """

    name: str
    matches: Callable[[StateDict], bool]
    role: Callable[[Path], Component]
    build: Callable[[StateDict, str, Component], nn.Module]


def _vae_role(path: Path) -> Component:
    folder = path.parent.name.lower()
    if "vae_a" in folder:
        return Component.VAE_A
    if "vae_b" in folder:
        return Component.VAE_B_SCRATCH if "scratch" in folder else Component.VAE_B_QUALITY
    raise ConversionError(
        f"{path}: a VAE checkpoint, but the three released VAEs share keys and shapes and its folder "
        f"{path.parent.name!r} names none of VAE_A_quality, VAE_B_quality, VAE_B_scratch"
    )


def _fixed(component: Component) -> Callable[[Path], Component]:
    return lambda _path: component


def _any_role(
    build: Callable[[StateDict, str], nn.Module],
) -> Callable[[StateDict, str, Component], nn.Module]:
    """For families whose network does not depend on the role."""
    return lambda state_dict, source, _component: build(state_dict, source)


FACE_LOAD_SIZES = {Component.FACE_256: 256, Component.FACE_512: 512}


def _face_role(path: Path) -> Component:
    """``Setting_9_epoch_100`` and ``FaceSR_512`` share keys and shapes; only the size they run at differs.

    That size is not in the file, so the folder name decides: "512" in it means the HR generator.
    """
    return Component.FACE_512 if "512" in path.parent.name else Component.FACE_256


def _face_build(state_dict: StateDict, source: str, component: Component) -> nn.Module:
    return face_generator_from_official(state_dict, source, load_size=FACE_LOAD_SIZES[component])


FAMILIES: list[Family] = [
    Family("VAE generator", is_official_vae, _vae_role, _any_role(vae_from_official)),
    Family(
        "plain mapping",
        is_official_mapping,
        _fixed(Component.MAPPING_QUALITY),
        _any_role(mapping_from_official),
    ),
    Family(
        "mapping with partial non-local block",
        is_official_nonlocal_mapping,
        _fixed(Component.MAPPING_SCRATCH),
        _any_role(nonlocal_mapping_from_official),
    ),
    Family(
        "mapping with patch attention",
        is_official_patch_attention_mapping,
        _fixed(Component.MAPPING_HR),
        _any_role(patch_attention_mapping_from_official),
    ),
    Family(
        "scratch detector",
        is_official_detector,
        _fixed(Component.SCRATCH_DETECTOR),
        _any_role(detector_from_official),
    ),
    Family("SPADE face generator", is_official_face_generator, _face_role, _face_build),
]


def read_official_file(path: Path) -> dict[str, torch.Tensor]:
    """Read one released checkpoint safely and return its bare state dict.

    Raises:
        ConversionError: truncated or unreadable files, pickles holding arbitrary objects, and
            containers without a state dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConversionError(
            f"{path}: refused: the file holds Python objects other than tensors, and loading it would "
            f"run arbitrary code (torch.load weights_only=True said: {str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): {exc}"
        ) from exc
    if isinstance(obj, dict) and "model_state" in obj:
        obj = obj["model_state"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def identify(state_dict: StateDict, path: Path) -> Family:
    """The family whose keys ``state_dict`` has; exactly one must match."""
    found = [f for f in FAMILIES if f.matches(state_dict)]
    if len(found) != 1:
        sample = ", ".join(list(state_dict)[:5])
        what = "no known network" if not found else "several networks: " + ", ".join(f.name for f in found)
        raise ConversionError(f"{path}: unknown checkpoint variant ({what}); first keys: {sample}")
    return found[0]


def find_official_files(root: Path) -> list[Path]:
    files = sorted({p for pattern in OFFICIAL_PATTERNS for p in root.glob(pattern) if p.is_file()})
    return files


def convert_official(
    official_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[Component, Path]:
    """Convert every released checkpoint under ``official_dir`` into ``out_dir``.

    Returns:
        The written component directories by component.

    Raises:
        ConversionError: no checkpoint found, a file that cannot be read, identified or loaded
            (shape mismatches included), or two files for the same component. Nothing is written
            unless every file converts.
    """
    root = Path(official_dir)
    if not root.is_dir():
        raise ConversionError(f"{root} is not a directory")
    files = find_official_files(root)
    if not files:
        raise ConversionError(
            f"no released checkpoints under {root} (looked for {', '.join(OFFICIAL_PATTERNS)})"
        )
    converted: dict[Component, tuple[nn.Module, Path]] = {}
    for path in files:
        state_dict = read_official_file(path)
        family = identify(state_dict, path)
        component = family.role(path)
        if component in converted:
            raise ConversionError(f"{path} and {converted[component][1]} are both a {component.value}")
        try:
            model = family.build(state_dict, str(path), component)
        except CheckpointError as exc:
            raise ConversionError(str(exc)) from exc
        logger.info("%s: %s -> %s", path.relative_to(root), family.name, component.value)
        converted[component] = (model, path)
    out = Path(out_dir)
    written = {}
    for component, (model, path) in converted.items():
        written[component] = save_component(
            model, out / component.value, extra={"converted_from": str(path.relative_to(root))}
        )
    return written
