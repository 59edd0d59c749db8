"""Restore a folder (or one file) of photos: sorted inputs, finished photos skipped, every failure counted.

Inputs are never modified. Each output is written to a temporary file and renamed, so a run that
is interrupted — even by SIGKILL — leaves only complete photos, and the next run continues with
the photos that are not done yet.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from latent_restore.core.atomic import remove_stale_temporaries, write_atomic
from latent_restore.core.imaging import IMAGE_EXTENSIONS, ImageReadError, encode_png, read_photo
from latent_restore.pipeline import RestorationOptions, RestorationPipeline

logger = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    """What happened to every input."""

    restored: list[Path] = field(default_factory=list)
    already_done: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 only when every photo is restored (now or by an earlier run)."""
        return 1 if self.failed else 0

    def report(self) -> str:
        lines = [
            f"restored {len(self.restored)}, already done {len(self.already_done)}, "
            f"failed {len(self.failed)}, ignored {len(self.ignored)} (hidden or not an image)"
        ]
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def collect_inputs(path: Path, recursive: bool = False) -> tuple[Path, list[Path], list[Path]]:
    """Photos under ``path`` (a folder or one file), by sorted relative path.

    Returns:
        ``(root, photos, ignored)``: ``photos`` and ``ignored`` are relative to ``root``; hidden files
        and files without an image extension are ignored (not failures).
    """
    if path.is_file():
        return path.parent, [Path(path.name)], []
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    candidates = path.rglob("*") if recursive else path.iterdir()
    photos, ignored = [], []
    for file in candidates:
        if not file.is_file():
            continue
        relative = file.relative_to(path)
        if _hidden(relative) or file.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(relative)
        else:
            photos.append(relative)
    return path, sorted(photos, key=lambda p: p.as_posix()), sorted(ignored)


def shard(items: list[Path], index: int, count: int) -> list[Path]:
    """The ``index``-th of ``count`` disjoint, deterministic shares of the sorted ``items``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} is not valid: need 0 <= K < N")
    return items[index::count]


def output_names(photos: Iterable[Path]) -> dict[Path, Path]:
    """``a/b.jpg -> a/b.png``; photos sharing a stem in one folder keep their extension (``b.jpg.png``)."""
    photos = list(photos)
    stems: dict[Path, int] = {}
    for p in photos:
        key = p.with_suffix("")
        stems[key] = stems.get(key, 0) + 1
    return {
        p: (p.with_name(p.name + ".png") if stems[p.with_suffix("")] > 1 else p.with_suffix(".png"))
        for p in photos
    }


def check_writable(directory: Path) -> None:
    """Fail before any work when results could not be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PermissionError(
            f"cannot write to the output folder {directory}: {exc.strerror or exc}"
        ) from exc


def run_batch(
    pipeline: RestorationPipeline,
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    options: RestorationOptions,
    recursive: bool = False,
    overwrite: bool = False,
    save_stages: bool = False,
    shard_index: int = 0,
    shard_count: int = 1,
    show_progress: bool = True,
) -> BatchSummary:
    """Restore every photo under ``input_path`` into ``output_dir/<relative stem>.png``."""
    output_dir = Path(output_dir)
    root, photos, ignored = collect_inputs(Path(input_path), recursive)
    check_writable(output_dir)
    pipeline.check_ready(options)
    names = output_names(photos)
    photos = shard(photos, shard_index, shard_count)
    summary = BatchSummary(ignored=[root / p for p in ignored])
    options.return_stages = options.return_stages or save_stages
    bar = tqdm(photos, desc="photos", unit="photo", disable=not show_progress)
    for relative in bar:
        source, target = root / relative, output_dir / names[relative]
        if target.parent.is_dir():
            remove_stale_temporaries(target.parent)  # left by an interrupted earlier run
        if target.exists() and not overwrite:
            summary.already_done.append(source)
            continue
        bar.set_postfix_str(relative.as_posix()[-40:])
        pipeline.stage_callback = lambda stage, name=relative.name: bar.set_postfix_str(
            f"{name[-30:]}: {stage}"
        )
        try:
            photo = read_photo(source)
            result = pipeline(photo, options)
            gray = photo.gray_file and not options.colorize  # a colorized gray file is written in colour
            data = encode_png(result.image, result.alpha, gray, photo.icc_profile, photo.exif)
            write_atomic(target, data)
            if save_stages:
                for stage, image in result.stages.items():
                    write_atomic(
                        output_dir / "stages" / stage / names[relative],
                        encode_png(image, gray=image.ndim == 2),
                    )
        except ImageReadError as exc:
            summary.failed.append((source, str(exc)))
            logger.warning("%s: skipped: %s", source, exc)
            continue
        except Exception as exc:  # one photo's failure must not stop the batch
            summary.failed.append((source, f"{type(exc).__name__}: {exc}"))
            logger.error("%s: failed: %s", source, exc)
            continue
        finally:
            pipeline.stage_callback = None
        summary.restored.append(source)
        logger.info("%s -> %s (%s)", relative, target, result.path)
    return summary
