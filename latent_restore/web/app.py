"""The local web page and its JSON API, around the same :class:`RestorationPipeline` the CLI uses.

``create_app`` builds a Flask app over an injected pipeline (tests pass one built from tiny
weights); ``serve`` runs it with Werkzeug's threaded server for ``latent-restore serve``. The page
itself is static HTML, CSS and plain JavaScript shipped in ``static/`` — no framework and no remote
asset, so it works offline.

API (every error is ``{"error": message}`` with the HTTP status):

* ``GET  /api/info`` — available modes and limits.
* ``POST /api/jobs`` — multipart ``image`` + form fields ``with_scratch``, ``faces``, ``hr``
  → ``202 {"id", "status", ...}``; 400 undecodable photo or a mode the server lacks (``faces=true``
  without a face model), 413 too many bytes or pixels, 503 queue full. ``faces`` defaults to
  whether the server has a face model.
* ``GET  /api/jobs/<id>`` — ``{"status", "progress", "stage", "position", "error", "notes", ...}``;
  ``stage`` is null once the photo is restored.
* ``GET  /api/jobs/<id>/result`` and ``/original`` — PNGs (``?download=1`` for an attachment).
* ``DELETE /api/jobs/<id>`` — forget a job and its files now; a running job is cancelled and stops
  at the pipeline's next stage or tile.
* ``GET  /api/results.zip?ids=a,b`` — the results of several finished jobs.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import signal
import socket
import tempfile
import threading
import unicodedata
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from latent_restore import __version__
from latent_restore.core.checkpoint import CheckpointError
from latent_restore.core.config import ConfigError
from latent_restore.core.imaging import ImageReadError
from latent_restore.pipeline import IncompatibleWeightsError, RestorationOptions, WeightsNotFoundError
from latent_restore.web.jobs import (
    Job,
    JobManager,
    JobStatus,
    ManagerClosedError,
    Pipeline,
    QueueFullError,
    UploadTooLargeError,
    megabytes,
)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
EXTENSION_KEY = "latent_restore.jobs"
MULTIPART_SLACK = 64 << 10
"""Room for the multipart envelope, so a file of exactly the limit is still accepted."""
MAX_ZIP_JOBS = 200
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
_TRUE = frozenset({"1", "true", "on", "yes"})
_FALSE = frozenset({"", "0", "false", "off", "no"})

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def download_stem(client_name: str | None) -> str:
    """A safe file-name stem from whatever name the browser sent (only ever used in headers and zips).

    Drops any folder part (either slash), the extension, control and punctuation characters, and
    leading dots; keeps letters of any script.
    """
    name = (client_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    stem = unicodedata.normalize("NFC", stem)
    kept = "".join(c if c.isalnum() or c in "-_ ()" else "_" for c in stem)
    kept = re.sub(r" ?_[ _]*", "_", re.sub(r"\s+", " ", kept))
    kept = kept.strip(" -_")[:80].strip(" -_")
    return kept or "photo"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _flag(name: str, default: bool) -> bool:
    value = request.form.get(name)
    if value is None:
        return default
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(400, f"form field {name!r} must be true or false, got {value[:20]!r}")


def _job_json(job: Job, manager: JobManager) -> dict[str, Any]:
    base = f"/api/jobs/{job.id}"
    done = job.status is JobStatus.DONE
    return {
        "id": job.id,
        "status": job.status.value,
        "progress": round(job.progress, 3),
        "stage": job.stage,
        "position": manager.position(job.id) if job.status is JobStatus.QUEUED else None,
        "error": job.error,
        "notes": job.notes,
        "width": job.width,
        "height": job.height,
        "filename": f"{download_stem(job.client_name)}_restored.png",
        "options": {
            "with_scratch": job.options.with_scratch,
            "hr": job.options.hr,
            "faces": job.options.faces,
        },
        "original_url": f"{base}/original" if job.original is not None else None,
        "result_url": f"{base}/result" if done else None,
    }


def _available(pipeline: Pipeline, options: RestorationOptions) -> bool:
    """Whether the weights hold what ``options`` need.

    Asked of the component store when the pipeline has one: ``check_ready`` also loads and checks
    the networks, seconds per mode, and the page waits for this answer before it can be used.
    """
    required = getattr(pipeline, "required_components", None)
    components = getattr(pipeline, "components", None)
    if required is not None and components is not None:
        return all(components.available(c) for c in required(options))
    try:
        pipeline.check_ready(options)
    except WeightsNotFoundError:
        return False
    return True


def create_app(
    pipeline: Pipeline,
    max_upload_mb: float = 50,
    queue_size: int = 32,
    ttl_seconds: float = 3600.0,
    trusted_hosts: list[str] | None = None,
    manager: JobManager | None = None,
    temp_root: str | Path | None = None,
) -> Flask:
    """The web app over one pipeline.

    Args:
        pipeline: restores the photos; only the job manager's worker thread calls it.
        max_upload_mb: largest accepted upload (413 beyond).
        queue_size: most photos waiting at once (503 beyond).
        ttl_seconds: how long finished results are kept.
        trusted_hosts: ``Host`` header values accepted (guards a loopback server against DNS
            rebinding); None accepts any.
        manager: a ready job manager (tests inject one with a fake clock); by default one is made.
        temp_root: where the default manager makes its private folder (default: the system's).

    Returns:
        The app; its job manager is ``app.extensions["latent_restore.jobs"]`` and must be closed
        (``manager.close()``) to stop the worker and remove the temporary files.
    """
    max_bytes = int(max_upload_mb * 2**20)
    if manager is None:
        manager = JobManager(
            pipeline, queue_size=queue_size, ttl=ttl_seconds, max_upload_bytes=max_bytes, temp_root=temp_root
        )
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config.update(
        MAX_CONTENT_LENGTH=manager.max_upload_bytes + MULTIPART_SLACK, TRUSTED_HOSTS=trusted_hosts
    )
    app.extensions[EXTENSION_KEY] = manager
    limit_text = megabytes(manager.max_upload_bytes)

    def find(job_id: str) -> Job:
        job = manager.get(job_id)
        if job is None:
            raise ApiError(404, "no such job (unknown, deleted or expired)")
        return job

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify(error=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        message = f"the upload is larger than {limit_text}" if status == 413 else exc.description
        return jsonify(error=message), status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        logger.exception("unexpected error serving %s", request.path)
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    @app.before_request
    def same_origin_only() -> None:
        """Refuse state-changing requests that another web site's page sends to this server."""
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise ApiError(403, "cross-origin request refused")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index() -> Response:
        response = send_file(STATIC_DIR / "index.html", mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/api/info")
    def info() -> Response:
        return jsonify(
            version=__version__,
            modes={
                "quality": _available(pipeline, RestorationOptions()),
                "with_scratch": _available(pipeline, RestorationOptions(with_scratch=True)),
                "hr": _available(pipeline, RestorationOptions(with_scratch=True, hr=True)),
                "faces": getattr(pipeline, "face_enhancer", None) is not None,
            },
            max_upload_bytes=manager.max_upload_bytes,
            max_pixels=manager.max_pixels,
            queue_size=manager.queue_size,
            ttl_seconds=manager.ttl,
        )

    @app.post("/api/jobs")
    def submit() -> tuple[Response, int, dict[str, str]]:
        upload = request.files.get("image")
        if upload is None:
            raise ApiError(400, "send the photo as multipart/form-data in the field 'image'")
        has_faces = getattr(pipeline, "face_enhancer", None) is not None
        faces = _flag("faces", has_faces)
        if faces and not has_faces:
            raise ApiError(
                400,
                "face enhancement is not available: the server runs without a face model "
                "(started with --no-faces, or the weights have none); send faces=false",
            )
        options = RestorationOptions(
            with_scratch=_flag("with_scratch", False), hr=_flag("hr", False), faces=faces
        )
        try:
            job = manager.submit(upload.stream, upload.filename, options)
        except ImageReadError as exc:
            raise ApiError(400, f"not a photo we can read: {exc}") from None
        except WeightsNotFoundError as exc:
            raise ApiError(400, f"this mode is not available: {exc}") from None
        except (IncompatibleWeightsError, CheckpointError, ConfigError) as exc:
            logger.error("the weights cannot run %s: %s", options, exc)
            raise ApiError(500, f"the server's weights cannot run this mode: {exc}") from None
        except UploadTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except (QueueFullError, ManagerClosedError) as exc:
            raise ApiError(503, str(exc)) from None
        finally:
            upload.close()
        body = _job_json(job, manager)
        return jsonify(body), 202, {"Location": f"/api/jobs/{job.id}"}

    @app.get("/api/jobs/<job_id>")
    def status(job_id: str) -> Response:
        return jsonify(_job_json(find(job_id), manager))

    @app.delete("/api/jobs/<job_id>")
    def delete(job_id: str) -> tuple[str, int]:
        if not manager.delete(job_id):
            raise ApiError(404, "no such job (unknown, deleted or expired)")
        return "", 204

    def send_png(path: Path | None, name: str) -> Response:
        try:
            return send_file(
                path,
                mimetype="image/png",
                as_attachment=request.args.get("download") == "1",
                download_name=name,
                conditional=False,
                etag=False,
            )
        except FileNotFoundError:  # expired between the lookup and the read
            raise ApiError(404, "no such job (unknown, deleted or expired)") from None

    @app.get("/api/jobs/<job_id>/result")
    def result(job_id: str) -> Response:
        job = find(job_id)
        if job.status is JobStatus.FAILED:
            raise ApiError(409, f"the restoration failed: {job.error}")
        if job.status is not JobStatus.DONE:
            raise ApiError(409, f"the photo is not restored yet (status: {job.status.value})")
        return send_png(job.result, f"{download_stem(job.client_name)}_restored.png")

    @app.get("/api/jobs/<job_id>/original")
    def original(job_id: str) -> Response:
        job = find(job_id)
        if job.original is None:
            raise ApiError(409, f"the photo has not been decoded yet (status: {job.status.value})")
        return send_png(job.original, f"{download_stem(job.client_name)}_original.png")

    @app.get("/api/results.zip")
    def results_zip() -> Response:
        ids = [i for i in request.args.get("ids", "").split(",") if i]
        if not ids:
            raise ApiError(400, "pass the job ids as ?ids=ID,ID,...")
        if len(ids) > MAX_ZIP_JOBS:
            raise ApiError(400, f"at most {MAX_ZIP_JOBS} jobs per archive")
        jobs = [find(i) for i in dict.fromkeys(ids)]
        unfinished = [j for j in jobs if j.status is not JobStatus.DONE]
        if unfinished:
            raise ApiError(409, f"{len(unfinished)} of the photos are not restored (yet)")
        # Not a with-block: send_file streams the archive after this function returns, then closes it.
        archive = tempfile.SpooledTemporaryFile(max_size=32 << 20, dir=manager.work_dir)  # noqa: SIM115
        used: set[str] = set()
        try:
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
                for job in jobs:
                    stem = download_stem(job.client_name)
                    name, n = f"{stem}_restored.png", 1
                    while name.lower() in used:
                        n += 1
                        name = f"{stem}_restored ({n}).png"
                    used.add(name.lower())
                    bundle.write(job.result, name)
        except FileNotFoundError:
            archive.close()
            raise ApiError(404, "a job expired while its archive was being made") from None
        archive.seek(0)
        return send_file(
            archive, mimetype="application/zip", as_attachment=True, download_name="restored_photos.zip"
        )

    return app


SHUTDOWN_WAIT_S = 5.0
"""How long stopping waits for a running photo to reach its next stage or tile (container managers
such as Docker send SIGKILL 10 s after SIGTERM)."""


def serve(
    pipeline: Pipeline,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: float = 50,
    queue_size: int = 32,
    ttl_seconds: float = 3600.0,
    temp_root: str | Path | None = None,
) -> bool:
    """Serve the page until interrupted (Ctrl-C or SIGTERM), then remove every temporary file.

    Stopping cancels the photo being restored; it stops at its next stage or tile, waited for at
    most :data:`SHUTDOWN_WAIT_S` seconds.

    Args:
        pipeline: the one pipeline instance; its ``max_pixels`` is the largest photo accepted.
        host: address to bind; anything but loopback is warned about, since the page has no login.
        port: TCP port; 0 picks a free one (the URL is logged).
        max_upload_mb, queue_size, ttl_seconds, temp_root: see :func:`create_app`.

    Returns:
        True when everything stopped; False when the worker thread is still inside a pipeline call
        (one long stage): the caller should then leave the process with ``os._exit``, because
        tearing down the interpreter under a running torch computation aborts the process.

    Raises:
        OSError: the address cannot be bound.
    """
    loopback = is_loopback(host)
    if not loopback:
        logger.warning(
            "serving on %s, not loopback: anyone who can reach this machine can upload photos to it; "
            "the page has no login",
            host,
        )
    trusted = sorted({*LOOPBACK_NAMES, host}) if loopback else None
    app = create_app(
        pipeline, max_upload_mb, queue_size, ttl_seconds, trusted_hosts=trusted, temp_root=temp_root
    )
    manager: JobManager = app.extensions[EXTENSION_KEY]
    try:
        listener = _listen(host, port)
    except BaseException:
        manager.close()
        raise
    with listener:
        server = make_server(host, port, app, threaded=True, fd=listener.fileno())
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per poll would drown the log
    try:
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "latent-restore web page: http://%s:%d/ (photos up to %s megapixels, %s each)",
            shown,
            server.port,
            f"{manager.max_pixels / 1e6:.1f}",
            megabytes(manager.max_upload_bytes),
        )
        server.serve_forever()  # Werkzeug's returns on Ctrl-C (and on SIGTERM, see _interrupt)
        logger.info("shutting down")
    except KeyboardInterrupt:
        logger.info("shutting down")
    finally:
        server.server_close()
        stopped = _close(manager)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not stopped:
        logger.warning(
            "a photo was still being restored after %.0f s; it is abandoned and its files are removed",
            SHUTDOWN_WAIT_S,
        )
    return stopped


def _close(manager: JobManager) -> bool:
    """Close the manager; a second Ctrl-C or SIGTERM cuts the wait short, never the clean-up."""
    try:
        return manager.close(SHUTDOWN_WAIT_S)
    except KeyboardInterrupt:
        return manager.close(0)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, so a taken port raises OSError (Werkzeug would print and exit instead)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the server like Ctrl-C, so the temporary files are removed."""
    raise KeyboardInterrupt
