"""Reading the released checkpoints: release archives and unzipped trees, safely.

An archive is told apart by its members (global: ``checkpoints/restoration`` or
``checkpoints/detection``; face: ``checkpoints/<name>/*.pth``), not by its file name. Its members
are read into memory, never extracted: an archive with an absolute, ``..`` or symlink member is
refused whole, and the uncompressed bytes read (declared and actually read) are bounded. Each file
is read with ``torch.load(weights_only=True)``: a pickle that holds anything but tensors and plain
containers is refused.
"""

from __future__ import annotations

import contextlib
import enum
import io
import logging
import os
import pickle
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import IO

import torch

from latent_restore.weights import Component, file_sha256

logger = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 4 << 30
"""Most uncompressed bytes read from one archive (the two releases hold about 0.8 and 0.7 GB)."""

CHECKPOINT_SUFFIXES = (".pth", ".pt")


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
