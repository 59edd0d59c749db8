"""The web server's private work folder: created locked, removed whole, found again after a crash.

Files live in a private temporary folder (mode 0700) under random names. Each folder holds a lock
file that its server keeps locked (``flock``) for as long as the folder exists, so a server that
could not clean up (SIGKILL, power loss) leaves a folder whose lock anyone can take: the next
server started by the same user recognises it and removes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale folders are left to the system's cleanup
    fcntl = None

logger = logging.getLogger(__name__)

WORK_DIR_PREFIX = "latent-restore-web-"
LOCK_NAME = "server.lock"
"""Held (``flock``) by the live server for as long as its folder exists; never counted as a job file."""


def remove_stale_work_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Remove the work folders under ``root`` that servers of this user left behind when they died.

    A folder is stale when it has this module's prefix, belongs to the current user and its lock
    file can be locked, i.e. no live process holds it (the kernel drops a dead process's locks,
    SIGKILL included). Folders without a lock file are left alone: they may be being created.

    Returns:
        The folders removed.
    """
    if fcntl is None:
        return []
    removed = []
    for candidate in Path(root).glob(f"{WORK_DIR_PREFIX}*"):
        try:
            info = candidate.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        try:
            fd = os.open(candidate / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its server is alive
        try:
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(candidate)
    if removed:
        logger.info(
            "removed %d temporary folder(s) left by a server that was killed: %s",
            len(removed),
            ", ".join(str(p) for p in removed),
        )
    return removed


def make_work_dir(root: str | None) -> tuple[Path, int | None]:
    """A private folder (mode 0700) and the descriptor of its held lock file."""
    work_dir = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX, dir=root))
    if fcntl is None:
        return work_dir, None
    # Locked under a temporary name and renamed: another server never sees the lock file unlocked.
    creating = work_dir / f".{LOCK_NAME}.creating"
    fd = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(creating, work_dir / LOCK_NAME)
    except BaseException:
        os.close(fd)
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return work_dir, fd


def remove_work_dir(path: Path, lock_fd: int | None) -> None:
    """Remove the folder, then release its lock (the order keeps others from judging it stale early)."""
    shutil.rmtree(path, ignore_errors=True)
    if lock_fd is not None:
        os.close(lock_fd)


def write_private(path: Path, data: bytes) -> None:
    """Create a new file in the work folder (never ``write_atomic``, which would recreate the folder).

    The names are random and a path is published to clients only after its file is complete, so
    no reader sees a partial file; and a write that races the folder's removal at shutdown must
    fail instead of bringing the folder back outside anyone's cleanup.
    """
    with open(path, "xb") as handle:
        handle.write(data)


def copy_limited(source: BinaryIO, target: BinaryIO, limit: int, chunk: int = 1 << 20) -> int | None:
    """Copy at most ``limit`` bytes; None when the source has more."""
    total = 0
    while block := source.read(chunk):
        total += len(block)
        if total > limit:
            return None
        target.write(block)
    return total
