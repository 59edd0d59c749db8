"""What the web tests share: test images, stand-in pipelines, the app and live-server helpers, fixtures."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from werkzeug.serving import make_server

from latent_restore.core.imaging import encode_png, read_photo
from latent_restore.pipeline import Progress, RestorationOptions, RestorationPipeline, Stage
from latent_restore.web.app import EXTENSION_KEY, create_app
from latent_restore.web.jobs import LOCK_NAME, JobManager

WAIT_S = 60.0


# ----------------------------------------------------------------------------------------- helpers


def _pixels(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.35 * np.sin(xx / (3.0 + seed % 5))[..., None] * np.cos(yy / 4.0)[..., None]
    return (np.clip(base + rng.normal(0, 0.08, (h, w, 3)), 0, 1) * 255).astype(np.uint8)


def _png(h: int, w: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(h, w, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _expected(
    reference: RestorationPipeline, data: bytes, options: RestorationOptions, tmp: Path
) -> np.ndarray:
    """What the pipeline itself makes of this upload, encoded and decoded like the server's result."""
    path = tmp / f"{uuid.uuid4().hex}.img"
    path.write_bytes(data)
    photo = read_photo(path)
    result = reference(photo, options)
    return _decode(encode_png(result.image, result.alpha, photo.gray_file, photo.icc_profile, photo.exif))


def _files_in(manager: JobManager) -> list[Path]:
    """The job files in the manager's folder (not its lock file)."""
    return [p for p in manager.work_dir.iterdir() if p.is_file() and p.name != LOCK_NAME]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB pixels but holds almost no data (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


class GatedPipeline:
    """Wraps a pipeline; each call waits for ``gate`` (to hold the worker busy) or raises ``fail``."""

    def __init__(self, inner: RestorationPipeline, fail: Exception | None = None) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail
        self.face_enhancer = None
        self.max_pixels = inner.max_pixels
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def check_ready(self, options: RestorationOptions) -> None:
        self.inner.check_ready(options)

    def __call__(self, photo, options=None, progress: Progress | None = None):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            assert self.gate.wait(WAIT_S)
            if self.fail is not None:
                raise self.fail
            if progress is not None:
                progress.stage(Stage.GLOBAL)
            return self.inner(photo, options)
        finally:
            with self._lock:
                self.active -= 1


def tiny_pipeline(weights: Path) -> RestorationPipeline:
    """The pipeline the web tests serve (tiny weights, CPU, no faces)."""
    return RestorationPipeline.from_pretrained(weights, device="cpu", faces=False)


@contextmanager
def _app(pipeline, **kwargs) -> Iterator:
    app = create_app(pipeline, **kwargs)
    try:
        yield app
    finally:
        app.extensions[EXTENSION_KEY].close()


def _submit(client, data: bytes, name: str = "photo.png", **fields: str):
    return client.post(
        "/api/jobs", data={"image": (io.BytesIO(data), name), **fields}, content_type="multipart/form-data"
    )


def _wait(client, job_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        state = client.get(f"/api/jobs/{job_id}").get_json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {WAIT_S} s")


# ----------------------------------------------------------------------------------------- live server


@contextmanager
def _live(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) without raising on HTTP errors."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _post_live(base: str, data: bytes, name: str = "photo.png", **fields: str):
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, _, payload = _http(
        "POST", f"{base}/api/jobs", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return status, json.loads(payload)


def _wait_live(base: str, job_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status, _, payload = _http("GET", f"{base}/api/jobs/{job_id}")
        assert status == 200, payload
        state = json.loads(payload)
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {WAIT_S} s")


def _still_serving(base: str, reference: RestorationPipeline, tmp: Path) -> None:
    data = _png(20, 28, seed=99)
    status, body = _post_live(base, data)
    assert status == 202, body
    assert _wait_live(base, body["id"])["status"] == "done"
    status, _, png = _http("GET", f"{base}/api/jobs/{body['id']}/result")
    assert status == 200
    np.testing.assert_array_equal(
        _decode(png), _expected(reference, data, RestorationOptions(faces=True), tmp)
    )
