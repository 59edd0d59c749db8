"""Writing a converted weights set: all components at once, never mixed with another set.

The set is written into a staging folder beside the destination (a hidden name the resolver never
looks at) and renamed into place at the end, so a refused or killed conversion leaves no folder
that looks like weights, and an existing set is replaced whole.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_restore.core.atomic import write_atomic
from latent_restore.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_component
from latent_restore.release_sources import ConversionError
from latent_restore.weights import SOURCE_NAME, Component, file_sha256

if TYPE_CHECKING:
    from latent_restore.convert import Converted

STAGING_PREFIX = ".latent-restore-convert-"


def _is_weight_set_entry(path: Path) -> bool:
    if path.name == SOURCE_NAME:
        return path.is_file()
    if path.is_dir() and path.name in {c.value for c in Component}:
        return all(child.name in (WEIGHTS_NAME, CONFIG_NAME) for child in path.iterdir())
    return False


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse to write where a conversion would mix with, or destroy, something else.

    An empty or missing folder is fine. A folder holding a weights set (component folders and
    ``source.json`` only) is replaced whole with ``overwrite``, never merged; any other content is
    never touched.

    Raises:
        ConversionError: explaining which case applies and what to do.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConversionError(f"--out {out} exists and is not a folder")
    if not out.exists():
        return
    entries = [p for p in out.iterdir() if not p.name.startswith(STAGING_PREFIX)]
    if not entries:
        return
    foreign = [p.name for p in entries if not _is_weight_set_entry(p)]
    if foreign:
        raise ConversionError(
            f"--out {out} holds files that are not part of a weights set ({', '.join(sorted(foreign)[:5])}); "
            "choose an empty or new folder"
        )
    if not overwrite:
        raise ConversionError(
            f"--out {out} already holds a weights set ({', '.join(sorted(p.name for p in entries))}); "
            "pass --overwrite to replace it whole (its components are never mixed with new ones), "
            "or choose a new folder"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_staging(parent: Path) -> None:
    """Remove staging folders left by conversions that were killed (their process is gone)."""
    if not parent.is_dir():
        return
    for stale in parent.glob(f"{STAGING_PREFIX}*"):
        pid = stale.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if stale.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def write_weight_set(
    converted: Mapping[Component, Converted],
    out: Path,
    overwrite: bool = False,
    provenance: Mapping[str, Any] | None = None,
    carry: Mapping[Component, Path] | None = None,
) -> dict[Component, Path]:
    """Write converted networks as a weights set at ``out``, all at once.

    Everything goes into a staging folder beside ``out`` (a hidden name the resolver never looks
    at), which is renamed onto ``out`` when complete; an existing set there is replaced whole.

    Args:
        converted: from :func:`convert_sources`.
        out: the weights directory.
        overwrite: replace an existing set (see :func:`check_destination`).
        provenance: extra fields for ``source.json``.
        carry: existing component folders copied into the new set unchanged (``download --only``
            keeps the other archive's components this way).

    Returns:
        The final component directories by component.
    """
    out = Path(out)
    check_destination(out, overwrite)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(parent)
    staging = parent / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        components: dict[str, dict[str, Any]] = {}
        for component, item in converted.items():
            # The same file gives the same component whether it came zipped or unzipped; which
            # archive it came from is recorded in source.json.
            extra = {"converted_from": str(item.file.name)}
            directory = save_component(item.model, staging / component.value, extra=extra)
            components[component.value] = {
                "from": str(item.file.name),
                "source": item.source.path.name,
                "network": item.family,
                "sha256": file_sha256(directory / WEIGHTS_NAME),
            }
        for component, directory in (carry or {}).items():
            shutil.copytree(directory, staging / component.value)
            components[component.value] = {
                "carried_from": str(directory),
                "sha256": file_sha256(staging / component.value / WEIGHTS_NAME),
            }
        sources = {}
        for item in converted.values():
            src = item.source
            sources[str(src.path)] = {
                "name": src.path.name,
                "type": "archive" if src.archive is not None else "folder",
                "release": sorted(k.value for k in src.kinds),
                **({"sha256": src.sha256, "bytes": src.path.stat().st_size} if src.sha256 else {}),
            }
        meta = {
            "format_version": 1,
            "kind": "official",
            "sources": list(sources.values()),
            "components": dict(sorted(components.items())),
            **dict(provenance or {}),
        }
        text = json.dumps(meta, indent=2) + "\n"
        write_atomic(staging / SOURCE_NAME, text.encode("utf-8"))
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {component: out / component.value for component in [*converted, *(carry or {})]}


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` onto ``out``; a previous set there is moved aside first, then deleted."""
    if out.exists():
        old = out.parent / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-old"
        os.replace(out, old)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
