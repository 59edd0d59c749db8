"""The one rule of every command that writes images: a user's input is never written to.

``latent-restore run`` and ``latent-restore degrade`` both plan their outputs up front and check
them here before any file is written: the output folder must not be the input folder, an output
folder inside the input tree is never read as input, and no planned output may be (by path or by
inode — hard links and symlinks included) a file that exists among the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class OutputLocationError(ValueError):
    """The planned outputs would overwrite or re-read the inputs; the message says how."""


def check_output_dir(input_root: Path, output_dir: Path) -> None:
    """Refuse an output folder that is the input folder itself.

    Raises:
        OutputLocationError: naming both folders.
    """
    if input_root.resolve() == output_dir.resolve():
        raise OutputLocationError(
            f"the output folder {output_dir} is the input folder; it must differ, or results would mix "
            "with (or replace) the originals"
        )


def is_inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it (after resolving symlinks)."""
    return path.resolve().is_relative_to(folder.resolve())


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_inputs_untouched(targets: Iterable[Path], inputs: Iterable[Path]) -> None:
    """Refuse when a planned output path is one of the input files.

    Raises:
        OutputLocationError: listing the first few clashes.
    """
    input_paths = list(inputs)
    resolved = {p.resolve() for p in input_paths}
    identities = {i for i in map(_identity, input_paths) if i is not None}
    clash = [t for t in targets if t.resolve() in resolved or (t.exists() and _identity(t) in identities)]
    if clash:
        shown = ", ".join(str(p) for p in clash[:5])
        raise OutputLocationError(f"refused: the output would overwrite input file(s): {shown}")
