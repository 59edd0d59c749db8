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
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import os
import pickle
import secrets
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import IO, Any

import torch
from torch import nn

from face_enhance.convert import face_generator_from_official, is_official_face_generator
from latent_restore.core.atomic import write_atomic
from latent_restore.core.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    check_finite,
    save_component,
)
from latent_restore.weights import SOURCE_NAME, Component, file_sha256
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

MAX_ARCHIVE_BYTES = 4 << 30
"""Most uncompressed bytes read from one archive (the two releases hold about 0.8 and 0.7 GB)."""

CHECKPOINT_SUFFIXES = (".pth", ".pt")
STAGING_PREFIX = ".latent-restore-convert-"


class ConversionError(RuntimeError):
    """A released checkpoint cannot be converted; the message says which file and why."""


class ReleaseKind(str, enum.Enum):
    """The two release archives, recognised by where their members sit."""

    GLOBAL = "global"
    FACE = "face"


RELEASE_FILES = {ReleaseKind.GLOBAL: "global_checkpoints.zip", ReleaseKind.FACE: "face_checkpoints.zip"}
"""File names of the release assets (tag v1.0 of the authors' repository)."""

EXPECTED_COMPONENTS: dict[ReleaseKind, frozenset[Component]] = {
    ReleaseKind.GLOBAL: frozenset(
        {
            Component.VAE_A,
            Component.VAE_B_QUALITY,
            Component.VAE_B_SCRATCH,
            Component.MAPPING_QUALITY,
            Component.MAPPING_SCRATCH,
            Component.MAPPING_HR,
            Component.SCRATCH_DETECTOR,
        }
    ),
    ReleaseKind.FACE: frozenset({Component.FACE_256, Component.FACE_512}),
}
"""What a complete release archive of each kind converts to."""

_REPOSITORY_FOLDERS = {"Global": ReleaseKind.GLOBAL, "Face_Enhancement": ReleaseKind.FACE}
_GLOBAL_FOLDERS = ("restoration", "detection")


def release_kind(relative: PurePath) -> ReleaseKind | None:
    """Which release a checkpoint at ``relative`` (inside an archive or tree) belongs to, if any.

    ``checkpoints/restoration/<name>/*.pth`` and ``checkpoints/detection/*.pt[h]`` are global;
    ``checkpoints/<name>/*.pth`` is a face generator. One leading ``Global/`` or
    ``Face_Enhancement/`` (the repository's folders) is allowed and must agree.
    """
    parts = relative.parts
    if not parts or parts[-1].startswith(".") or not parts[-1].endswith(CHECKPOINT_SUFFIXES):
        return None
    allowed = set(ReleaseKind)
    if parts[0] in _REPOSITORY_FOLDERS:
        allowed = {_REPOSITORY_FOLDERS[parts[0]]}
        parts = parts[1:]
    restoration = len(parts) == 4 and parts[:2] == ("checkpoints", "restoration")
    detection = len(parts) == 3 and parts[:2] == ("checkpoints", "detection")
    kind = None
    if (restoration and parts[3].endswith(".pth")) or detection:
        kind = ReleaseKind.GLOBAL
    elif len(parts) == 3 and parts[0] == "checkpoints" and parts[1] not in _GLOBAL_FOLDERS:
        kind = ReleaseKind.FACE if parts[2].endswith(".pth") else None
    return kind if kind in allowed else None


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


def load_official_checkpoint(
    handle: str | os.PathLike[str] | IO[bytes], label: str
) -> dict[str, torch.Tensor]:
    """Read one released checkpoint safely and return its bare state dict.

    Args:
        handle: a file path, or an open binary file (an archive member spooled to disk).
        label: names the file in messages (``archive.zip:member`` for archive members).

    Raises:
        ConversionError: truncated or unreadable files (a text file, say), pickles holding
            arbitrary objects, and containers without a state dict.
    """
    check_checkpoint_head(_head(handle), label)
    try:
        obj = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConversionError(
            f"{label}: refused: the file holds Python objects other than tensors, and loading it would "
            f"run arbitrary code (torch.load weights_only=True said: {str(exc).splitlines()[0]})"
        ) from exc
    except Exception as exc:  # the unpickler of a damaged or foreign file can raise anything
        reason = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise ConversionError(
            f"{label}: cannot be read as a PyTorch checkpoint (truncated, corrupt or not a checkpoint): "
            f"{type(exc).__name__}: {reason}"
        ) from exc
    if isinstance(obj, dict) and "model_state" in obj:
        obj = obj["model_state"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{label}: holds no state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def check_checkpoint_head(head: bytes, label: str) -> None:
    """Refuse what does not start like a ``torch.save`` file.

    Both formats start so (a zip, or a pickle's PROTO opcode); anything else (a text file, an HTML
    page, a README) would only give a confusing unpickler error.
    """
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ConversionError(
            f"{label}: not a PyTorch checkpoint (it starts with {head[:16]!r}; "
            "a text file, an error page or a truncated download?)"
        )


def _head(handle: str | os.PathLike[str] | IO[bytes], size: int = 16) -> bytes:
    if isinstance(handle, io.BytesIO):
        return handle.getbuffer()[:size].tobytes()
    if hasattr(handle, "read"):
        start = handle.tell()
        head = handle.read(size)
        handle.seek(start)
        return head
    try:
        with open(handle, "rb") as file:
            return file.read(size)
    except OSError as exc:
        raise ConversionError(f"{handle}: cannot be read: {exc}") from exc


def read_official_file(path: Path) -> dict[str, torch.Tensor]:
    """:func:`load_official_checkpoint` of a file on disk (kept for callers that have a path)."""
    return load_official_checkpoint(path, str(path))


def identify(state_dict: StateDict, label: str | PurePath) -> Family:
    """The family whose keys ``state_dict`` has; exactly one must match."""
    found = [f for f in FAMILIES if f.matches(state_dict)]
    if len(found) != 1:
        sample = ", ".join(list(state_dict)[:5])
        what = "no known network" if not found else "several networks: " + ", ".join(f.name for f in found)
        raise ConversionError(f"{label}: unknown checkpoint variant ({what}); first keys: {sample}")
    return found[0]


@dataclass(frozen=True)
class CheckpointFile:
    """One released checkpoint inside a source.

    Attributes:
        name: path relative to the folder or archive root (the role reads folder names from it).
        kind: which release it belongs to.
        label: names it in messages.
    """

    name: PurePosixPath
    kind: ReleaseKind
    label: str


@dataclass
class Source:
    """A folder or an archive given to ``convert``, with the checkpoints found in it.

    Attributes:
        path: what the user gave.
        archive: an open zip archive, or None for a folder.
        files: the checkpoints found, sorted by name.
        sha256: hex digest of the archive file (None for folders).
        max_bytes: most uncompressed bytes read from the archive, all members together.
    """

    path: Path
    archive: zipfile.ZipFile | None
    files: list[CheckpointFile]
    sha256: str | None = None
    max_bytes: int = MAX_ARCHIVE_BYTES
    _infos: dict[str, zipfile.ZipInfo] = field(default_factory=dict)
    _read_bytes: int = 0

    @property
    def kinds(self) -> set[ReleaseKind]:
        return {f.kind for f in self.files}

    def describe(self) -> str:
        kinds = " + ".join(sorted(k.value for k in self.kinds))
        return f"{self.path} ({kinds} {'archive' if self.archive is not None else 'folder'})"

    def read(self, file: CheckpointFile) -> dict[str, torch.Tensor]:
        """The state dict of one checkpoint (archive members are read into memory, bounded)."""
        if self.archive is None:
            return load_official_checkpoint(self.path / file.name, file.label)
        info = self._infos[str(file.name)]
        if self._read_bytes + info.file_size > self.max_bytes:
            raise ConversionError(
                f"{file.label}: refused: reading its {info.file_size} bytes would exceed the "
                f"{self.max_bytes} uncompressed bytes allowed per archive"
            )
        with tempfile.TemporaryFile(prefix="latent-restore-member-") as spool:
            try:
                with self.archive.open(info) as member:
                    # The signature first: a bomb of zeros is refused after 16 bytes, not 1 GiB.
                    head = member.read(16)
                    check_checkpoint_head(head, file.label)
                    spool.write(head)
                    size = len(head)
                    # Copied in pieces to a private temporary file, so memory holds only the
                    # tensors; one byte more than declared shows a member that inflates beyond it.
                    limit = info.file_size + 1
                    while size < limit and (block := member.read(min(1 << 20, limit - size))):
                        spool.write(block)
                        size += len(block)
            except ConversionError:
                raise
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                RuntimeError,
                NotImplementedError,
                ValueError,
            ) as exc:
                raise ConversionError(f"{file.label}: cannot be read from the archive: {exc}") from exc
            if size != info.file_size:
                raise ConversionError(
                    f"{file.label}: refused: holds {size}+ bytes where the archive declares {info.file_size}"
                )
            self._read_bytes += size
            spool.seek(0)
            return load_official_checkpoint(spool, file.label)


def _is_symlink_member(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_archive_members(archive: zipfile.ZipFile, path: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """Refuse an archive with an unsafe member, before anything is read from it.

    Raises:
        ConversionError: a member with an absolute path, a ``..`` component or a symlink type, or
            a declared uncompressed total above ``max_bytes``.
    """
    total = 0
    for info in archive.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise ConversionError(f"{path}: refused: member {name!r} has an absolute path")
        if ".." in parts:
            raise ConversionError(f"{path}: refused: member {name!r} points outside the archive ('..')")
        if _is_symlink_member(info):
            raise ConversionError(f"{path}: refused: member {name!r} is a symbolic link")
        total += info.file_size
        if total > max_bytes:
            raise ConversionError(
                f"{path}: refused: its members declare more than {max_bytes} uncompressed bytes "
                "(a zip bomb, or not a release archive)"
            )


def _open_archive(path: Path, stack: contextlib.ExitStack, max_bytes: int, digest: bool) -> Source:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ConversionError(f"{path}: neither a folder nor a readable zip archive ({exc})") from exc
    check_archive_members(archive, path, max_bytes)
    if any(name.endswith("/data.pkl") for name in archive.namelist()):
        raise ConversionError(
            f"{path} is a single PyTorch checkpoint, not a release archive: pass the release zip, or "
            "the folder it was unzipped into (the folder names pick the roles of some networks)"
        )
    files, infos = [], {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = PurePosixPath(info.filename)
        kind = release_kind(name)
        if kind is None:
            logger.debug("%s: ignoring member %s", path, info.filename)
            continue
        files.append(CheckpointFile(name, kind, f"{path}:{info.filename}"))
        infos[info.filename] = info
    files.sort(key=lambda f: str(f.name))
    return Source(path, archive, files, file_sha256(path) if digest else None, max_bytes, infos)


def _tree_candidates(root: Path) -> Iterator[Path]:
    for prefix in ("", "Global/", "Face_Enhancement/"):
        for pattern in ("checkpoints/restoration/*/*", "checkpoints/detection/*", "checkpoints/*/*"):
            yield from root.glob(prefix + pattern)


def _open_tree(root: Path) -> Source:
    files = {}
    for path in _tree_candidates(root):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        kind = release_kind(relative)
        if kind is None:
            continue
        if path.is_symlink() and not path.exists():
            raise ConversionError(f"{path}: a broken symbolic link")
        if path.is_file():
            files[relative] = CheckpointFile(relative, kind, str(path))
    return Source(root, None, [files[k] for k in sorted(files, key=str)])


def open_source(
    path: str | os.PathLike[str],
    stack: contextlib.ExitStack,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    digest: bool = True,
) -> Source:
    """A folder or release archive, checked and listed (archives stay open until ``stack`` closes).

    ``digest`` computes the archive's SHA-256 (recorded in ``source.json``).

    Raises:
        ConversionError: a missing path, a file that is not a zip, an unsafe archive, or a source
            holding no released checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        source = _open_tree(path)
    elif path.is_file():
        source = _open_archive(path, stack, max_bytes, digest)
    elif path.is_symlink():
        raise ConversionError(f"{path}: a broken symbolic link")
    else:
        raise ConversionError(f"{path} does not exist")
    if not source.files:
        raise ConversionError(
            f"no released checkpoints in {path} (looked for [Global/]checkpoints/restoration/<name>/*.pth, "
            "[Global/]checkpoints/detection/*.pt and [Face_Enhancement/]checkpoints/<name>/*.pth)"
        )
    return source


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
