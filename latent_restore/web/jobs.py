"""The web page's job queue: one pipeline, one worker thread, a bounded queue, results that expire.

The networks are large and not thread-safe to load lazily, so every photo goes through a single
worker thread in arrival order: there is never more than one model load or pipeline call at a
time, however many browser tabs upload at once. Request threads only validate uploads (by
decoding them — an extension proves nothing) and read job states.

A running job can be cancelled (deleted, or the server stopping): the pipeline reports each stage
and each tile through callbacks, and the next report after a cancellation raises
:class:`JobCancelledError` on the worker thread, so the photo stops between tiles or stages.

Files live in a private work folder (:mod:`latent_restore.web.workdir`) under random names; nothing
a client sends ever becomes part of a path. Finished jobs expire after a time to live, taking their
files with them, and the whole folder is removed when the manager closes or the interpreter exits.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import secrets
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from latent_restore.core.imaging import ImageReadError, PixelLimitError, encode_png, read_photo
from latent_restore.options import planned_stages
from latent_restore.pipeline import Progress, RestorationOptions, RestorationResult
from latent_restore.web.workdir import (
    LOCK_NAME,
    WORK_DIR_PREFIX,
    copy_limited,
    make_work_dir,
    remove_stale_work_dirs,
    remove_work_dir,
    write_private,
)

__all__ = [
    "LOCK_NAME",
    "WORK_DIR_PREFIX",
    "Job",
    "JobCancelledError",
    "JobManager",
    "JobStatus",
    "ManagerClosedError",
    "Pipeline",
    "QueueFullError",
    "UploadTooLargeError",
    "megabytes",
    "remove_stale_work_dirs",
]

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 30.0
"""How often the idle worker looks for expired jobs (lookups also sweep, so expiry is exact)."""


class Pipeline(Protocol):
    """What the queue needs of :class:`~latent_restore.pipeline.RestorationPipeline` (tests may wrap one)."""

    face_enhancer: object | None
    max_pixels: int

    def check_ready(self, options: RestorationOptions) -> None: ...

    def __call__(
        self, photo, options: RestorationOptions | None = None, progress: Progress | None = None
    ) -> RestorationResult: ...


class JobStatus(str, enum.Enum):
    """Where a job is; the API reports the value."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class QueueFullError(RuntimeError):
    """The queue holds as many waiting photos as it may; the client should retry later."""


class UploadTooLargeError(ValueError):
    """The upload exceeds the byte or pixel limit."""


class ManagerClosedError(RuntimeError):
    """The server is shutting down."""


class JobCancelledError(Exception):
    """Raised by the stage and tile callbacks on the worker thread once its job has been cancelled.

    It unwinds the pipeline call between two stages or two tiles; the worker catches it.
    """


@dataclass
class Job:
    """One photo's way through the queue. Mutated only under the manager's lock.

    Attributes:
        id: unguessable identifier; knowing it is what grants access to the job.
        options: how the photo is restored (what the server can do: faces off without a face model).
        client_name: the file name the browser sent, used only (sanitised) for download names.
        width, height: the photo's upright size in pixels.
        upload: the uploaded bytes, under a random name; removed once the photo is decoded by the worker.
        original, result: PNGs of the photo before and after, once written.
        stage: what the worker is doing; None once the photo is restored, kept as the failing
            stage when it fails.
        notes: what the client asked for that was not done, and why.
        cancelled: set by :meth:`JobManager.delete` or :meth:`JobManager.close` while running.
    """

    id: str
    options: RestorationOptions
    client_name: str
    width: int
    height: int
    upload: Path
    created: float
    status: JobStatus = JobStatus.QUEUED
    progress: float = 0.0
    stage: str | None = None
    error: str | None = None
    original: Path | None = None
    result: Path | None = None
    finished: float | None = None
    stages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cancelled: bool = False

    def files(self) -> list[Path]:
        return [p for p in (self.upload, self.original, self.result) if p is not None]


class JobManager:
    """Queue of restoration jobs served by one worker thread.

    Args:
        pipeline: the one pipeline instance; only the worker thread calls it.
        queue_size: most photos waiting (not counting the one being restored); more answer
            :class:`QueueFullError`.
        ttl: seconds a finished job (and its files) is kept.
        max_upload_bytes: largest accepted upload.
        max_pixels: largest accepted photo, read from the file header before decoding it; default:
            the pipeline's own limit (``pipeline.max_pixels``, derived from the machine's memory).
        temp_root: where the private work folder is made (default: the system's temporary folder);
            stale folders of killed servers found there are removed first.
        clock: monotonic time source (tests inject one to expire jobs without waiting).

    Raises:
        ValueError: a queue size or pixel limit below 1.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        queue_size: int = 32,
        ttl: float = 3600.0,
        max_upload_bytes: int = 50 << 20,
        max_pixels: int | None = None,
        temp_root: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
        self.pipeline = pipeline
        self.queue_size = queue_size
        self.ttl = ttl
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = int(pipeline.max_pixels if max_pixels is None else max_pixels)
        self.clock = clock
        root = None if temp_root is None else str(temp_root)
        remove_stale_work_dirs(tempfile.gettempdir() if root is None else root)
        self.work_dir, lock_fd = make_work_dir(root)
        self._remove_work_dir = weakref.finalize(self, remove_work_dir, self.work_dir, lock_fd)
        self._jobs: dict[str, Job] = {}
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        # Decoding a large photo takes hundreds of MB; bound how many request threads do it at once.
        self._decode_slots = threading.BoundedSemaphore(2)
        self._ready_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="latent-restore-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------ requests

    def submit(self, data: BinaryIO, client_name: str | None, options: RestorationOptions) -> Job:
        """Validate an upload and queue it.

        Faces asked for on a server without a face model are switched off in the job's options
        and said so in its notes (the API refuses an explicit request before it gets here).

        Args:
            data: the uploaded file, read to its end.
            client_name: the name the client gave the file (never used as a path).
            options: how to restore it.

        Returns:
            A snapshot of the queued job.

        Raises:
            QueueFullError: no room in the queue (checked before and after reading the upload).
            UploadTooLargeError: more bytes or pixels than allowed.
            ImageReadError: the file is not a decodable photo; the message says why.
            WeightsNotFoundError: the weights lack what ``options`` needs.
            ManagerClosedError: shutting down.
        """
        with self._ready_lock:  # the first check of a mode loads its networks: once, not per thread
            self.pipeline.check_ready(options)
        notes = []
        if options.faces and self.pipeline.face_enhancer is None:
            options = dataclasses.replace(options, faces=False)
            notes.append("faces were not enhanced: the server has no face model")
        with self._cond:
            self._check_room()
        upload = self._new_path(".upload")
        try:
            with open(upload, "wb") as handle:
                size = copy_limited(data, handle, self.max_upload_bytes)
            if size is None:
                raise UploadTooLargeError(f"the upload is larger than {megabytes(self.max_upload_bytes)}")
            width, height = self._validate(upload)
            with self._cond:
                self._check_room()
                progress = [s.value for s in planned_stages(options, self.pipeline.face_enhancer is not None)]
                job = Job(
                    id=secrets.token_urlsafe(16),
                    options=options,
                    client_name=(client_name or "")[:255],
                    width=width,
                    height=height,
                    upload=upload,
                    created=self.clock(),
                    stages=[*progress, "saving"],
                    notes=notes,
                )
                self._jobs[job.id] = job
                self._pending.append(job)
                self._cond.notify_all()
                logger.info(
                    "job %s…: queued %dx%d (%d waiting)", job.id[:6], width, height, len(self._pending)
                )
                return _snapshot(job)
        except BaseException:
            upload.unlink(missing_ok=True)
            raise

    def _check_room(self) -> None:
        if self._closed:
            raise ManagerClosedError("the server is shutting down")
        if len(self._pending) >= self.queue_size:
            raise QueueFullError(
                f"the queue is full ({self.queue_size} photos waiting); try again when some are done"
            )

    def _validate(self, path: Path) -> tuple[int, int]:
        """Decode the whole file, as the worker will: the only proof that it is a photo we can restore.

        The pixel limit is checked from the header first (Pillow's decompression-bomb warning and
        error included), so a photo that is too large is refused before a pixel is decoded.
        """
        with self._decode_slots:
            try:
                photo = read_photo(path, max_pixels=self.max_pixels)
            except PixelLimitError as exc:
                raise UploadTooLargeError(str(exc)) from None
        height, width = photo.size
        return width, height

    def get(self, job_id: str) -> Job | None:
        """A snapshot of the job, or None when it is unknown or expired."""
        with self._cond:
            self._sweep()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return _snapshot(job)

    def position(self, job_id: str) -> int | None:
        """1 for the next photo to be restored, None when the job is not waiting."""
        with self._cond:
            for index, job in enumerate(self._pending):
                if job.id == job_id:
                    return index + 1
        return None

    def delete(self, job_id: str) -> bool:
        """Forget a job and remove its files; a running one is cancelled.

        A running photo stops at the pipeline's next stage or tile; until then the worker stays
        busy with it, but the job is gone for every client at once and its files are removed as
        soon as the worker lets go of them.

        Returns:
            False when the job is unknown.
        """
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if job.status is JobStatus.RUNNING:
                job.cancelled = True
                logger.info("job %s…: cancelled during %s", job.id[:6], job.stage or "start-up")
            elif job.status is JobStatus.QUEUED:
                self._pending.remove(job)
            self._forget(job)
            return True

    def sweep(self) -> int:
        """Remove finished jobs older than the time to live; returns how many."""
        with self._cond:
            return self._sweep()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the worker, drop waiting jobs, cancel the running one and remove every temporary file.

        The running photo stops at its next stage or tile. After ``timeout`` seconds the files are
        removed anyway and that job's late writes fail harmlessly. Calling again (say after a
        second Ctrl-C interrupted the wait) waits again and removes whatever is left.

        Returns:
            True when the worker thread has stopped; False when it is still inside a pipeline
            call (a process about to exit should then leave with ``os._exit``: tearing down the
            interpreter under a running torch computation aborts the process).
        """
        with self._cond:
            first = not self._closed
            self._closed = True
            self._pending.clear()
            if self._running is not None:
                self._running.cancelled = True
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        with self._cond:
            self._jobs.clear()
        self._remove_work_dir()
        if first:
            logger.info("removed the web page's temporary files in %s", self.work_dir)
        return not self._worker.is_alive()

    def __enter__(self) -> JobManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ internals

    def _new_path(self, suffix: str) -> Path:
        return self.work_dir / f"{secrets.token_hex(16)}{suffix}"

    def _forget(self, job: Job) -> None:
        """Drop ``job`` and its files (lock held)."""
        self._jobs.pop(job.id, None)
        for path in job.files():
            path.unlink(missing_ok=True)

    def _sweep(self) -> int:
        """Expire finished jobs (lock held)."""
        now = self.clock()
        expired = [j for j in self._jobs.values() if j.finished is not None and now - j.finished >= self.ttl]
        for job in expired:
            self._forget(job)
        if expired:
            logger.info("expired %d finished job(s)", len(expired))
        return len(expired)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending:
                    self._cond.wait(timeout=min(SWEEP_INTERVAL_S, max(self.ttl, 0.1)))
                    self._sweep()
                if self._closed:
                    return
                job = self._pending.popleft()
                job.status = JobStatus.RUNNING
                self._running = job
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None

    def _check_cancelled(self, job: Job) -> None:
        """Raise :class:`JobCancelledError` when ``job`` was cancelled (lock held)."""
        if job.cancelled:
            raise JobCancelledError(f"job {job.id[:6]}… was cancelled")

    def _set_stage(self, job: Job, stage: str) -> None:
        """The pipeline's stage callback: a checkpoint where a cancelled job stops."""
        with self._cond:
            self._check_cancelled(job)
            job.stage = stage
            if stage in job.stages:
                job.progress = 0.05 + 0.9 * job.stages.index(stage) / len(job.stages)

    def _tile_done(self, job: Job, done: int, total: int) -> None:
        """The pipeline's tile callback: progress within the stage, and a checkpoint between tiles."""
        with self._cond:
            self._check_cancelled(job)
            if job.stage in job.stages and total > 0:
                index = job.stages.index(job.stage) + min(done, total) / total
                job.progress = 0.05 + 0.9 * index / len(job.stages)

    def _run(self, job: Job) -> None:
        """Restore one photo on the worker thread; any failure is the job's, never the worker's."""
        start = time.perf_counter()
        progress = Progress(
            on_stage=lambda stage: self._set_stage(job, stage),
            on_tile=lambda done, total: self._tile_done(job, done, total),
        )
        try:
            self._set_stage(job, "reading")
            photo = read_photo(job.upload, max_pixels=self.max_pixels)
            original = self._new_path(".png")
            write_private(original, encode_png(photo.rgb, photo.alpha, photo.gray_file, photo.icc_profile))
            with self._cond:
                job.original = original
                self._check_cancelled(job)
            result = self.pipeline(photo, job.options, progress)
            self._set_stage(job, "saving")
            data = encode_png(result.image, result.alpha, photo.gray_file, photo.icc_profile, photo.exif)
            path = self._new_path(".png")
            write_private(path, data)
        except Exception as exc:
            with self._cond:
                cancelled = job.cancelled
            if cancelled:  # whatever the exception: the files may have been removed under it
                logger.info("job %s…: stopped after %.1f s", job.id[:6], time.perf_counter() - start)
            else:
                reason = str(exc) if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
                logger.error("job %s…: failed: %s", job.id[:6], reason)
                with self._cond:
                    job.status, job.error = JobStatus.FAILED, reason
        else:
            with self._cond:
                job.result, job.status, job.progress, job.stage = path, JobStatus.DONE, 1.0, None
            logger.info("job %s…: done in %.1f s (%s)", job.id[:6], time.perf_counter() - start, result.path)
        finally:
            with self._cond:
                job.upload.unlink(missing_ok=True)
                job.finished = self.clock()
                if self._closed or job.id not in self._jobs:
                    for path in job.files():
                        path.unlink(missing_ok=True)


def _snapshot(job: Job) -> Job:
    """A copy that request threads may read without the lock."""
    copy = Job(**{name: getattr(job, name) for name in job.__dataclass_fields__})
    copy.stages, copy.notes = list(job.stages), list(job.notes)
    return copy


def megabytes(count: int) -> str:
    """``52428800`` -> ``50 MB`` (two decimals at most, as the limit was given)."""
    return f"{round(count / 2**20, 2):g} MB"
