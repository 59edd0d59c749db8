"""Restore a folder (or one file) of photos: sorted inputs, finished photos skipped, every failure counted.

Inputs are never modified, and never written to whatever the flags (:mod:`latent_restore.core.
output_rules`). Each output is written to a temporary file and renamed, so a run that is
interrupted — even by SIGKILL — leaves only complete photos, and the next run continues with the
photos that are not done yet. Every restored PNG carries a record of what made it (options and
weights identity, in a text chunk), so a rerun with other options redoes the photo instead of
calling it done. Ctrl-C stops after the current photo and still prints the summary.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from latent_restore.core.atomic import remove_stale_temporaries, write_atomic
from latent_restore.core.imaging import IMAGE_EXTENSIONS, ImageReadError, Photo, encode_png, read_photo
from latent_restore.core.output_rules import check_inputs_untouched, check_output_dir, is_inside
from latent_restore.pipeline import Progress, RestorationOptions, RestorationPipeline, RestorationResult

logger = logging.getLogger(__name__)

RECORD_KEY = "latent-restore"
"""PNG text chunk holding the JSON record of what produced a restored photo."""
STAGES_DIR = ".stages"
"""Where ``--save-stages`` writes: a hidden folder, and hidden inputs are never restored, so no
output path can ever fall inside it."""


@dataclass
class BatchSummary:
    """What happened to every input."""

    restored: list[Path] = field(default_factory=list)
    already_done: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C; else 0 only when every photo is restored (now or by an earlier run)."""
        if self.interrupted:
            return 130
        return 1 if self.failed or self.skipped else 0

    def report(self) -> str:
        lines = [
            f"restored {len(self.restored)}, already done {len(self.already_done)}, "
            f"failed {len(self.failed)}, skipped {len(self.skipped)}, "
            f"ignored {len(self.ignored)} (hidden or not an image)"
        ]
        if self.interrupted:
            lines.insert(0, "interrupted: stopped after the current photo; rerun to continue")
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        lines += [f"  skipped: {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _not_a_regular_file(file: Path) -> str | None:
    """Why ``file`` (named like an image) cannot be read as one, or None when it is a plain file."""
    try:
        st = file.stat()
    except FileNotFoundError:
        return "dangling symbolic link" if file.is_symlink() else "vanished"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return ""  # a folder named like an image: walked (recursive) or ignored, never a photo
    kind = "named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "device or socket"
    return f"not a regular file: {kind}"


@dataclass
class Inputs:
    """The photos of a run, relative to ``root``, and the rest of what was found."""

    root: Path
    photos: list[Path]
    ignored: list[Path]
    skipped: list[tuple[Path, str]]


def find_inputs(path: Path, recursive: bool = False, exclude: Path | None = None) -> Inputs:
    """Photos under ``path`` (a folder or one file), by sorted relative path.

    Hidden files and files without an image extension are ignored (not failures); files named
    like images that are not regular files (dangling links, FIFOs, devices) are skipped with a
    reason and never opened (a FIFO would block the run); ``exclude`` (the output folder, when it
    lies inside the input tree) is never read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if path.is_file():
        return Inputs(path.parent, [Path(path.name)], [], [])
    if not path.is_dir():
        if path.is_symlink() or path.exists():
            reason = _not_a_regular_file(path) or "not a photo"
            return Inputs(path.parent, [], [], [(Path(path.name), reason)])
        raise FileNotFoundError(f"{path} does not exist")
    candidates = path.rglob("*") if recursive else path.iterdir()
    photos, ignored, skipped = [], [], []
    for file in candidates:
        relative = file.relative_to(path)
        if exclude is not None and is_inside(file, exclude):
            continue
        if _hidden(relative):
            if not file.is_dir():
                ignored.append(relative)
            continue
        if file.suffix.lower() not in IMAGE_EXTENSIONS:
            if file.is_file():
                ignored.append(relative)
            continue
        reason = _not_a_regular_file(file)
        if reason is None:
            photos.append(relative)
        elif reason:
            skipped.append((relative, reason))
    return Inputs(path, sorted(photos, key=Path.as_posix), sorted(ignored), sorted(skipped))


def collect_inputs(path: Path, recursive: bool = False) -> tuple[Path, list[Path], list[Path]]:
    """``(root, photos, ignored)`` of :func:`find_inputs` (kept for callers that need no reasons)."""
    found = find_inputs(path, recursive)
    return found.root, found.photos, found.ignored + [p for p, _ in found.skipped]


def shard(items: list[Path], index: int, count: int) -> list[Path]:
    """The ``index``-th of ``count`` disjoint, deterministic shares of the sorted ``items``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} is not valid: need 0 <= K < N")
    return items[index::count]


def _key(path: Path) -> str:
    # Case-insensitive file systems (macOS, Windows) would merge names that differ only in case.
    return path.as_posix().casefold()


def output_names(photos: Iterable[Path]) -> dict[Path, Path]:
    """An injective map ``photo -> output``: ``a/b.jpg -> a/b.png`` when that is unambiguous.

    Photos whose ``<stem>.png`` would clash (``b.jpg`` and ``b.png``, or ``b.jpg`` and
    ``b.jpg.png``, or names that differ only in case) keep their whole name (``b.jpg.png``); any
    clash left after that gets a numbered suffix (``b.jpg~2.png``). Clashes are logged.
    """
    photos = sorted(photos, key=Path.as_posix)
    preferred: dict[str, list[Path]] = {}
    for p in photos:
        preferred.setdefault(_key(p.with_suffix(".png")), []).append(p)
    names = {
        p: (
            p.with_suffix(".png")
            if len(preferred[_key(p.with_suffix(".png"))]) == 1
            else p.with_name(p.name + ".png")
        )
        for p in photos
    }
    taken: dict[str, Path] = {}
    for p in photos:
        name, n = names[p], 1
        while _key(name) in taken:
            n += 1
            name = p.with_name(f"{p.name}~{n}.png")
        taken[_key(name)] = p
        if name != p.with_suffix(".png"):
            logger.info(
                "%s -> %s (another input would also be written as %s)", p, name, p.with_suffix(".png")
            )
        names[p] = name
    return names


def check_writable(directory: Path) -> None:
    """Fail before any work when results could not be written (creates ``directory``)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PermissionError(
            f"cannot write to the output folder {directory}: {exc.strerror or exc}"
        ) from exc


def _existing_ancestor_writable(directory: Path) -> None:
    """Check, without creating anything, that ``directory`` could be made and written."""
    probe = directory.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to the output folder {directory}: {probe} is not writable")


def read_record(path: Path) -> dict | None:
    """The record of a restored PNG, None when it has none (not written by this package, or older)."""
    try:
        with Image.open(path) as image:
            text = image.info.get(RECORD_KEY)
    except (OSError, ValueError, SyntaxError):
        return None
    if not isinstance(text, str):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class _StopAfterCurrent:
    """SIGINT sets a flag the loop reads between photos; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopAfterCurrent:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupted: finishing the current photo (Ctrl-C again to stop at once)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@contextlib.contextmanager
def _progress(photos: list[Path], show: bool) -> Iterator[tqdm]:
    # Log lines go through tqdm.write while the bar is shown, so they never land on the bar's line.
    with logging_redirect_tqdm(loggers=[logging.getLogger()]) if show else contextlib.nullcontext():
        bar = tqdm(photos, desc="photos", unit="photo", disable=not show)
        try:
            yield bar
        finally:
            bar.close()


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
    io_threads: bool = True,
) -> BatchSummary:
    """Restore every photo under ``input_path`` into ``output_dir/<relative stem>.png``.

    Everything that can be checked is checked before the output folder is created: the inputs,
    the output location rules, the weights (loaded and checked for fit) and writability.

    Raises:
        FileNotFoundError: no such input.
        OutputLocationError: the output folder is the input folder, or an output would be an input.
        WeightsNotFoundError, CheckpointError: the weights cannot serve ``options``.
        PermissionError: the output folder cannot be written.
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    if input_path.is_dir():
        check_output_dir(input_path, output_dir)
    nested = input_path.is_dir() and is_inside(output_dir, input_path)
    found = find_inputs(input_path, recursive, exclude=output_dir if nested else None)
    root = found.root
    names = output_names(found.photos)
    planned = [output_dir / n for n in names.values()]
    check_inputs_untouched(planned, [root / p for p in found.photos])
    pipeline.check_ready(options)
    _existing_ancestor_writable(output_dir)
    photos = shard(found.photos, shard_index, shard_count)
    summary = BatchSummary(
        ignored=[root / p for p in found.ignored], skipped=[(root / p, r) for p, r in found.skipped]
    )
    for path, reason in summary.skipped:
        logger.warning("%s: skipped: %s", path, reason)
    if not photos:
        return summary
    check_writable(output_dir)
    options.return_stages = options.return_stages or save_stages
    run = _Run(pipeline, root, output_dir, names, options, overwrite, save_stages, summary)
    with _StopAfterCurrent() as stop, _progress(photos, show_progress) as bar:
        # The second Ctrl-C abandons the current photo: nothing is half-written.
        with contextlib.suppress(KeyboardInterrupt):
            run.all(photos, bar, stop, io_threads)
        summary.interrupted = stop.requested
    return summary


class _Run:
    """The per-photo work of one :func:`run_batch` call.

    With I/O threads, the next photo is decoded and the previous result encoded and written while
    the networks work on the current one (one photo ahead, one behind: bounded memory). Results,
    errors and the order of every summary list are the same as without them.
    """

    def __init__(
        self,
        pipeline: RestorationPipeline,
        root: Path,
        output_dir: Path,
        names: dict[Path, Path],
        options: RestorationOptions,
        overwrite: bool,
        save_stages: bool,
        summary: BatchSummary,
    ) -> None:
        self.pipeline, self.root, self.output_dir, self.names = pipeline, root, output_dir, names
        self.options, self.overwrite, self.save_stages = options, overwrite, save_stages
        self.summary = summary
        self.record = pipeline.record(options)
        self.record_text = json.dumps(self.record, sort_keys=True)
        self.cleaned: set[Path] = set()

    def _needed(self, source: Path, target: Path) -> bool:
        """False when ``target`` is already this run's result, or is a file this package did not make."""
        if target.parent not in self.cleaned and target.parent.is_dir():
            remove_stale_temporaries(target.parent)  # left by an interrupted earlier run
            self.cleaned.add(target.parent)
        if not target.exists() or self.overwrite:
            return True
        previous = read_record(target)
        if previous == self.record:
            self.summary.already_done.append(source)
            return False
        if previous is None:
            reason = f"{target} exists and was not made by latent-restore (--overwrite replaces it)"
            self.summary.skipped.append((source, reason))
            logger.warning("%s: skipped: %s", source, reason)
            return False
        logger.info("%s: redoing: %s was made with other options or weights", source, target)
        return True

    def _read(self, relative: Path) -> Photo:
        return read_photo(self.root / relative, max_pixels=self.pipeline.max_pixels)

    def _write(self, relative: Path, photo: Photo, result: RestorationResult) -> None:
        gray = photo.gray_file and not self.options.colorize  # a colorized gray file is written in colour
        text = {RECORD_KEY: self.record_text}
        data = encode_png(result.image, result.alpha, gray, photo.icc_profile, photo.exif, text)
        write_atomic(self.output_dir / self.names[relative], data)
        if self.save_stages:
            for stage, image in result.stages.items():
                stage_path = self.output_dir / STAGES_DIR / stage / self.names[relative]
                write_atomic(stage_path, encode_png(image, gray=image.ndim == 2))

    def _failed(self, relative: Path, exc: Exception) -> None:
        source = self.root / relative
        if isinstance(exc, ImageReadError):
            self.summary.failed.append((source, str(exc)))
            logger.warning("%s: skipped: %s", source, exc)
        else:  # one photo's failure must not stop the batch
            self.summary.failed.append((source, f"{type(exc).__name__}: {exc}"))
            logger.error("%s: failed: %s", source, exc)

    def _done(self, relative: Path, path: str) -> None:
        self.summary.restored.append(self.root / relative)
        logger.info("%s -> %s (%s)", relative, self.output_dir / self.names[relative], path)

    def all(self, photos: list[Path], bar: tqdm, stop: _StopAfterCurrent, io_threads: bool) -> None:
        """Restore ``photos`` in order, stopping between photos once ``stop`` is requested."""
        with contextlib.ExitStack() as stack:
            reader = writer = None
            if io_threads:
                reader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="decode"))
                writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="encode"))
            todo = iter(photos)
            pending: tuple[Path, str, Future] | None = None

            def next_needed() -> tuple[Path, Future | None] | None:
                for relative in todo:
                    if self._needed(self.root / relative, self.output_dir / self.names[relative]):
                        return relative, (reader.submit(self._read, relative) if reader else None)
                    bar.update(1)
                return None

            def finish_pending() -> None:
                nonlocal pending
                if pending is not None:
                    relative, path, future = pending
                    pending = None
                    self._settle(relative, path, future.result)
                    bar.update(1)

            try:
                upcoming = next_needed()
                while upcoming is not None and not stop.requested:
                    relative, read = upcoming
                    bar.set_postfix_str(relative.as_posix()[-40:])
                    try:
                        photo = read.result() if read is not None else self._read(relative)
                    except Exception as exc:
                        finish_pending()
                        self._failed(relative, exc)
                        bar.update(1)
                        upcoming = next_needed()
                        continue
                    upcoming = next_needed()  # decoded while the networks run
                    progress = Progress(
                        on_stage=lambda stage, name=relative.name: bar.set_postfix_str(
                            f"{name[-30:]}: {stage}"
                        )
                    )
                    try:
                        result = self.pipeline(photo, self.options, progress)
                    except Exception as exc:
                        finish_pending()
                        self._failed(relative, exc)
                        bar.update(1)
                        continue
                    finish_pending()
                    if writer is None:
                        self._settle(
                            relative,
                            self._how(result),
                            functools.partial(self._write, relative, photo, result),
                        )
                        bar.update(1)
                    else:
                        future = writer.submit(self._write, relative, photo, result)
                        pending = (relative, self._how(result), future)
            finally:
                finish_pending()

    def _how(self, result: RestorationResult) -> str:
        """How a photo was restored, for its log line: the global path and, with faces on, the faces."""
        if not self.options.faces or self.pipeline.face_enhancer is None:
            return result.path
        count = len(result.face_boxes)
        boxes = ", ".join(f"{x0},{y0}-{x1},{y1}" for x0, y0, x1, y1 in result.face_boxes)
        return f"{result.path}; {count} face{'s' if count != 1 else ''} enhanced" + (
            f" at {boxes}" if boxes else ""
        )

    def _settle(self, relative: Path, path: str, write: Callable[[], object]) -> None:
        """Count the photo restored once ``write`` (its encode and write) succeeds, else failed."""
        try:
            write()
        except Exception as exc:
            self._failed(relative, exc)
        else:
            self._done(relative, path)
