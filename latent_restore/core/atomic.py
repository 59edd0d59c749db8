"""The one atomic file writer: restored photos, components, training checkpoints and degraded sets.

A file is written to a hidden temporary beside its final path, flushed to disk and renamed into
place, so an interrupted run leaves either the complete old file, the complete new one, or a
temporary that a later run removes (:func:`remove_stale_temporaries`) — never a truncated file
under the final name. The temporary has a short name of its own (a photo's name may already be
near the file system's 255-byte limit) and the final file gets the mode a plain ``open()`` would
give it under the process's umask (``mkstemp`` alone would leave it readable by its owner only).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

TEMP_PREFIX = ".latent-restore-"
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path: Path) -> Path:
    while True:
        tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def write_atomic(path: str | os.PathLike[str], payload: bytes | Callable[[str], None]) -> None:
    """Atomically replace ``path`` with ``payload``.

    Args:
        path: the final file; its folder is created when missing.
        payload: the bytes to write, or a function that writes the file whose path it is given
            (for writers such as ``torch.save`` or ``safetensors`` that want a file name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        if callable(payload):
            payload(str(tmp))
        else:
            tmp.write_bytes(payload)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _writer_alive(name: str) -> bool:
    pid = name[len(TEMP_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike[str], older_than: float = 600.0) -> int:
    """Delete the temporaries an interrupted writer left in ``directory``; returns how many.

    Another process (a shard of the same run) may be writing into the same folder right now, so a
    temporary is removed only when the process named in it has ended, or when it has been
    untouched for ``older_than`` seconds (a process id can be reused).
    """
    removed = 0
    now = time.time()
    for stale in Path(directory).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            if not _writer_alive(stale.name) or now - stale.stat().st_mtime >= older_than:
                stale.unlink()
                removed += 1
        except OSError:
            pass
    return removed
