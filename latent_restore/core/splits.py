"""The fixed held-out split of clean photos: never trained on, used for evaluation.

A photo is held out when the SHA-256 of its path relative to the data root (POSIX form) falls in
the first fifth of the hash space. The rule needs no list, holds for any folder, and a photo keeps
its side when others are added or removed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HELD_OUT_FRACTION = 5
"""One photo in this many is held out."""


def is_held_out(relative_path: str | Path) -> bool:
    digest = hashlib.sha256(Path(relative_path).as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_FRACTION == 0


def split(paths: list[Path], root: Path) -> tuple[list[Path], list[Path]]:
    """``(train, held_out)`` of ``paths`` (files under ``root``), each in the input order."""
    train, held = [], []
    for path in paths:
        (held if is_held_out(path.relative_to(root)) else train).append(path)
    return train, held
