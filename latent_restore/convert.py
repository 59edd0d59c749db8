"""Convert the released checkpoints (release zips or unzipped trees) into a latent-restore weights directory.

A source is either one of the two release archives themselves or a folder laid out like them once
unzipped, with or without the repository folder above (any subset may be present)::

    [Global/]checkpoints/restoration/<name>/latest_net_{G,mapping_net}.pth   (global_checkpoints.zip)
    [Global/]checkpoints/detection/FT_Epoch_latest.pt
    [Face_Enhancement/]checkpoints/<name>/latest_net_G.pth                   (face_checkpoints.zip)

An archive is told apart by its members (global: ``checkpoints/restoration`` or
``checkpoints/detection``; face: ``checkpoints/<name>/*.pth``), not by its file name. Its members
are read into memory, never extracted: an archive with an absolute, ``..`` or symlink member is
refused whole, and the uncompressed bytes read (declared and actually read) are bounded.

Each file is read with ``torch.load(weights_only=True)`` (a pickle that holds anything but tensors
and plain containers is refused), its network family is recognised from its keys, renamed onto our
modules by table and loaded strictly; weights holding NaN or Inf are refused. Only where a family
has several roles with identical keys and shapes (the three VAEs; the two face generators) does
the folder name pick the role.

Nothing is written unless every file converts: the set is written into a temporary folder beside
the destination and renamed into place at the end, so a refused conversion leaves no folder that
looks like weights, and an existing set is replaced whole (never mixed with stale components).

Reading lives in :mod:`latent_restore.release_sources`, writing in
:mod:`latent_restore.weight_set_writer`; this module recognises each checkpoint's network family
(:data:`FAMILIES`, by keys) and converts it with the stage's rename table. Their public names are
re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import torch
from torch import nn

from face_enhance.convert import face_generator_from_official, is_official_face_generator
from latent_restore.core.checkpoint import CheckpointError, check_finite
from latent_restore.release_sources import (
    CHECKPOINT_SUFFIXES,
    EXPECTED_COMPONENTS,
    MAX_ARCHIVE_BYTES,
    RELEASE_FILES,
    CheckpointFile,
    ConversionError,
    ReleaseKind,
    Source,
    check_archive_members,
    check_checkpoint_head,
    load_official_checkpoint,
    open_source,
    read_official_file,
    release_kind,
)
from latent_restore.weight_set_writer import STAGING_PREFIX, check_destination, write_weight_set
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

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "EXPECTED_COMPONENTS",
    "FAMILIES",
    "MAX_ARCHIVE_BYTES",
    "RELEASE_FILES",
    "STAGING_PREFIX",
    "CheckpointFile",
    "ConversionError",
    "Converted",
    "Family",
    "ReleaseKind",
    "Source",
    "check_archive_members",
    "check_checkpoint_head",
    "check_destination",
    "convert_official",
    "convert_sources",
    "identify",
    "load_official_checkpoint",
    "open_source",
    "read_official_file",
    "release_kind",
    "write_weight_set",
]

logger = logging.getLogger(__name__)

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
    role: Callable[[PurePath], Component]
    build: Callable[[StateDict, str, Component], nn.Module]


def _vae_role(path: PurePath) -> Component:
    folder = path.parent.name.lower()
    if "vae_a" in folder:
        return Component.VAE_A
    if "vae_b" in folder:
        return Component.VAE_B_SCRATCH if "scratch" in folder else Component.VAE_B_QUALITY
    raise ConversionError(
        f"{path}: a VAE checkpoint, but the three released VAEs share keys and shapes and its folder "
        f"{path.parent.name!r} names none of VAE_A_quality, VAE_B_quality, VAE_B_scratch"
    )


def _fixed(component: Component) -> Callable[[PurePath], Component]:
    return lambda _path: component


def _any_role(
    build: Callable[[StateDict, str], nn.Module],
) -> Callable[[StateDict, str, Component], nn.Module]:
    """For families whose network does not depend on the role."""
    return lambda state_dict, source, _component: build(state_dict, source)


FACE_LOAD_SIZES = {Component.FACE_256: 256, Component.FACE_512: 512}


def _face_role(path: PurePath) -> Component:
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


def identify(state_dict: StateDict, label: str | PurePath) -> Family:
    """The family whose keys ``state_dict`` has; exactly one must match."""
    found = [f for f in FAMILIES if f.matches(state_dict)]
    if len(found) != 1:
        sample = ", ".join(list(state_dict)[:5])
        what = "no known network" if not found else "several networks: " + ", ".join(f.name for f in found)
        raise ConversionError(f"{label}: unknown checkpoint variant ({what}); first keys: {sample}")
    return found[0]


@dataclass
class Converted:
    """One converted network and where it came from."""

    model: nn.Module
    file: CheckpointFile
    source: Source
    family: str


def convert_sources(sources: Sequence[Source], require_complete: bool = False) -> dict[Component, Converted]:
    """Convert every checkpoint of ``sources`` in memory (nothing is written).

    Args:
        sources: opened with :func:`open_source`.
        require_complete: every archive must give all the components of its release
            (:data:`EXPECTED_COMPONENTS`); used by ``download``, where this stands in for a checksum.

    Raises:
        ConversionError: a file that cannot be read, identified or loaded (shape mismatches and
            NaN/Inf weights included), two files for one component, or an incomplete archive.
    """
    converted: dict[Component, Converted] = {}
    for source in sources:
        for file in source.files:
            state_dict = source.read(file)
            family = identify(state_dict, file.label)
            component = family.role(file.name)
            if component in converted:
                raise ConversionError(
                    f"{file.label} and {converted[component].file.label} are both a {component.value}"
                )
            try:
                check_finite(state_dict, f"{file.label} ({family.name} -> {component.value})")
                model = family.build(state_dict, file.label, component)
            except CheckpointError as exc:
                raise ConversionError(str(exc)) from exc
            del state_dict
            logger.info("%s: %s -> %s", file.label, family.name, component.value)
            converted[component] = Converted(model, file, source, family.name)
    if require_complete:
        for source in sources:
            for kind in source.kinds:
                got = {c for c, item in converted.items() if item.source is source and item.file.kind is kind}
                missing = sorted(c.value for c in EXPECTED_COMPONENTS[kind] - got)
                if missing:
                    raise ConversionError(
                        f"{source.path}: not a complete {RELEASE_FILES[kind]}: no checkpoint for "
                        f"{', '.join(missing)}"
                    )
    return converted


def convert_official(
    official: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
    require_complete: bool = False,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    provenance: Mapping[str, Any] | None = None,
) -> dict[Component, Path]:
    """Convert every released checkpoint in ``official`` (folders and/or release zips) into ``out_dir``.

    Args:
        official: one source or several (any mix of unzipped trees and release archives).
        out_dir: the weights directory to write (missing, empty, or a set to replace with
            ``overwrite``).
        overwrite: replace an existing weights set at ``out_dir`` whole.
        require_complete: see :func:`convert_sources`.
        max_archive_bytes: bound on the uncompressed bytes read from each archive.
        provenance: extra fields for ``source.json``.

    Returns:
        The written component directories by component.

    Raises:
        ConversionError: no checkpoint found, an unsafe archive, a file that cannot be read,
            identified or loaded (shape mismatches and NaN/Inf included), two files for the same
            component, or a destination that would be mixed. Nothing is written unless every file
            converts.
    """
    paths = [official] if isinstance(official, (str, os.PathLike)) else list(official)
    if not paths:
        raise ConversionError("no source given")
    out = Path(out_dir)
    check_destination(out, overwrite)
    with contextlib.ExitStack() as stack:
        sources = [open_source(p, stack, max_archive_bytes) for p in paths]
        for source in sources:
            logger.info("reading %s", source.describe())
        converted = convert_sources(sources, require_complete)
        written = write_weight_set(converted, out, overwrite, provenance)
    return written
