"""The web page's JSON API and job queue: limits, validation, isolation, concurrency, expiry, cleanup."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image
from werkzeug.serving import make_server

from latent_restore.cli import build_parser, main
from latent_restore.core.imaging import encode_png, read_photo
from latent_restore.pipeline import RestorationOptions, RestorationPipeline
from latent_restore.web.app import EXTENSION_KEY, create_app, download_stem, is_loopback
from latent_restore.web.jobs import LOCK_NAME, WORK_DIR_PREFIX, JobManager, ManagerClosedError

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
        self.stage_callback: Callable[[str], None] | None = None
        self.tile_callback: Callable[[int, int], None] | None = None
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def check_ready(self, options: RestorationOptions) -> None:
        self.inner.check_ready(options)

    def __call__(self, photo, options=None):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            assert self.gate.wait(WAIT_S)
            if self.fail is not None:
                raise self.fail
            if self.stage_callback is not None:
                self.stage_callback("global restoration")
            return self.inner(photo, options)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture(scope="module")
def pipeline(tiny_weights):
    return RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False)


@pytest.fixture(scope="module")
def reference(tiny_weights):
    """A second pipeline over the same weights, so expected outputs never share the server's instance."""
    return RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False)


@contextmanager
def _app(pipeline, **kwargs) -> Iterator:
    app = create_app(pipeline, **kwargs)
    try:
        yield app
    finally:
        app.extensions[EXTENSION_KEY].close()


@pytest.fixture
def client(pipeline):
    with _app(pipeline, max_upload_mb=0.25, queue_size=8) as app:
        yield app.test_client()


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


# ----------------------------------------------------------------------------------------- tests


def test_restore_and_download(client, reference, tmp_path) -> None:
    data = _png(37, 53, seed=1)
    response = _submit(client, data, "grand-mère.png", with_scratch="true", faces="false")
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued" and len(body["id"]) >= 22
    assert response.headers["Location"] == f"/api/jobs/{body['id']}"
    state = _wait(client, body["id"])
    assert state["status"] == "done" and state["progress"] == 1.0 and state["error"] is None
    assert state["stage"] is None and state["notes"] == []
    assert (state["width"], state["height"]) == (53, 37)
    assert state["options"] == {"with_scratch": True, "hr": False, "faces": False}

    result = client.get(f"/api/jobs/{body['id']}/result")
    assert result.status_code == 200 and result.mimetype == "image/png"
    assert result.headers["Cache-Control"] == "no-store"
    assert result.headers["X-Content-Type-Options"] == "nosniff"
    options = RestorationOptions(with_scratch=True, faces=False)
    np.testing.assert_array_equal(_decode(result.data), _expected(reference, data, options, tmp_path))

    original = client.get(f"/api/jobs/{body['id']}/original")
    np.testing.assert_array_equal(_decode(original.data), _pixels(37, 53, 1))

    download = client.get(f"/api/jobs/{body['id']}/result?download=1")
    disposition = download.headers["Content-Disposition"]
    assert disposition.startswith("attachment") and "grand-m%C3%A8re_restored.png" in disposition


def test_oversize_upload_is_413(pipeline, reference, tmp_path) -> None:
    with _app(pipeline, max_upload_mb=0.1) as app, _live(app) as base:
        too_big = _png(300, 300, seed=2)  # about 270 kB of incompressible noise
        assert len(too_big) > 0.2 * 2**20
        status, body = _post_live(base, too_big)
        assert status == 413 and "larger than 0.1 MB" in body["error"]
        assert not _files_in(app.extensions[EXTENSION_KEY])
        _still_serving(base, reference, tmp_path)

        # Just over the limit, inside the multipart slack: caught while copying the upload.
        client = app.test_client()
        response = _submit(client, b"\0" * (int(0.1 * 2**20) + 100))
        assert response.status_code == 413 and "larger than" in response.get_json()["error"]


def test_too_many_pixels_is_413(pipeline) -> None:
    manager = JobManager(pipeline, max_pixels=1000)
    with _app(pipeline, manager=manager) as app:
        response = _submit(app.test_client(), _png(40, 40))
        assert response.status_code == 413 and "too many pixels" in response.get_json()["error"]
        assert not _files_in(manager)


@pytest.mark.parametrize(
    "width,height,max_pixels",
    [
        (50_000, 50_000, None),  # 2.5 gigapixels: Pillow refuses it outright, whatever our limit
        (10_000, 10_000, 50_000_000),  # 100 MP: between Pillow's two limits, where it only warns
    ],
)
def test_decompression_bomb_is_413_without_a_warning(pipeline, width, height, max_pixels) -> None:
    manager = JobManager(pipeline, max_pixels=max_pixels)
    with _app(pipeline, manager=manager) as app, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = _submit(app.test_client(), _png_header_only(width, height), "bomb.png")
        assert response.status_code == 413, response.get_json()
        assert "too many pixels" in response.get_json()["error"]
        assert not _files_in(manager)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_defaults_to_the_pipelines(pipeline, tiny_weights) -> None:
    """The limit comes from the pipeline (derived from the machine's memory, or ``serve --max-pixels``)."""
    with _app(pipeline) as app:
        assert app.extensions[EXTENSION_KEY].max_pixels == pipeline.max_pixels
        assert app.test_client().get("/api/info").get_json()["max_pixels"] == pipeline.max_pixels
    small = RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False, max_pixels=1500)
    with _app(small) as app:
        client = app.test_client()
        assert _submit(client, _png(40, 40)).status_code == 413
        response = _submit(client, _png(30, 40))
        assert response.status_code == 202
        assert _wait(client, response.get_json()["id"])["status"] == "done"


@pytest.mark.parametrize(
    "data,name,reason",
    [
        (b"this is not a photo at all", "photo.jpg", "unknown format"),
        (b"", "empty.png", "empty file"),
        (_png(64, 64)[:200], "truncated.png", "cannot decode"),
    ],
)
def test_non_image_is_400(pipeline, reference, tmp_path, data, name, reason) -> None:
    with _app(pipeline) as app, _live(app) as base:
        status, body = _post_live(base, data, name)
        assert status == 400
        assert body["error"].startswith("not a photo we can read") and reason in body["error"]
        assert not _files_in(app.extensions[EXTENSION_KEY])
        _still_serving(base, reference, tmp_path)


def test_validated_by_content_not_extension(client) -> None:
    response = _submit(client, _png(16, 16), "notes.txt")
    assert response.status_code == 202
    assert _wait(client, response.get_json()["id"])["status"] == "done"


def test_bad_requests_are_400(client) -> None:
    response = client.post("/api/jobs", data={"with_scratch": "true"}, content_type="multipart/form-data")
    assert response.status_code == 400 and "'image'" in response.get_json()["error"]
    response = _submit(client, _png(8, 8), with_scratch="maybe")
    assert response.status_code == 400 and "with_scratch" in response.get_json()["error"]
    response = client.get("/api/results.zip")
    assert response.status_code == 400


def test_unknown_job_is_404(pipeline, reference, tmp_path) -> None:
    with _app(pipeline) as app, _live(app) as base:
        for path in ("", "/result", "/original"):
            status, _, payload = _http("GET", f"{base}/api/jobs/no-such-job{path}")
            assert status == 404 and "no such job" in json.loads(payload)["error"]
        status, _, _ = _http("DELETE", f"{base}/api/jobs/no-such-job")
        assert status == 404
        status, _, _ = _http("GET", f"{base}/api/jobs/..%2F..%2Fetc%2Fpasswd/result")
        assert status == 404
        status, _, _ = _http("GET", f"{base}/api/results.zip?ids=no-such-job")
        assert status == 404
        _still_serving(base, reference, tmp_path)


def test_twenty_concurrent_uploads(pipeline, reference, tmp_path) -> None:
    gated = GatedPipeline(pipeline)
    uploads = [
        (_png(20 + 3 * i, 24 + 2 * i, seed=10 + i), {"with_scratch": "true" if i % 10 == 3 else "false"})
        for i in range(20)
    ]

    def one(index: int) -> tuple[str, bytes]:
        data, fields = uploads[index]
        status, body = _post_live(base, data, f"photo_{index}.png", **fields)
        assert status == 202, body
        state = _wait_live(base, body["id"])
        assert state["status"] == "done", state
        status, headers, png = _http("GET", f"{base}/api/jobs/{body['id']}/result")
        assert status == 200 and headers["Content-Type"] == "image/png"
        return body["id"], png

    with _app(gated, queue_size=32) as app, _live(app) as base:
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(one, range(20)))
        _still_serving(base, reference, tmp_path)

    assert len({job_id for job_id, _ in results}) == 20
    assert gated.most_active == 1, "the pipeline was called concurrently"
    for (data, fields), (_, png) in zip(uploads, results, strict=True):
        options = RestorationOptions(with_scratch=fields["with_scratch"] == "true")
        np.testing.assert_array_equal(_decode(png), _expected(reference, data, options, tmp_path))


def test_results_are_reachable_only_through_their_own_id(client, reference, tmp_path) -> None:
    a, b = _png(30, 30, seed=3), _png(30, 30, seed=4)
    id_a = _submit(client, a, "../../etc/passwd").get_json()["id"]
    id_b = _submit(client, b, "b.png").get_json()["id"]
    assert _wait(client, id_a)["status"] == _wait(client, id_b)["status"] == "done"
    expected_a = _expected(reference, a, RestorationOptions(), tmp_path)
    expected_b = _expected(reference, b, RestorationOptions(), tmp_path)
    assert not np.array_equal(expected_a, expected_b)

    np.testing.assert_array_equal(_decode(client.get(f"/api/jobs/{id_a}/result").data), expected_a)
    np.testing.assert_array_equal(_decode(client.get(f"/api/jobs/{id_b}/result").data), expected_b)
    np.testing.assert_array_equal(_decode(client.get(f"/api/jobs/{id_b}/original").data), _pixels(30, 30, 4))

    # The client's name reaches only the download header; files are stored under random names.
    disposition = client.get(f"/api/jobs/{id_a}/result?download=1").headers["Content-Disposition"]
    assert "passwd_restored.png" in disposition and "/" not in disposition and ".." not in disposition
    manager = client.application.extensions[EXTENSION_KEY]
    names = [p.name for p in _files_in(manager)]
    assert len(names) == 4 and not any("passwd" in n or id_a in n or id_b in n for n in names)

    # Deleting one job leaves the other intact.
    assert client.delete(f"/api/jobs/{id_a}").status_code == 204
    assert client.get(f"/api/jobs/{id_a}/result").status_code == 404
    assert client.get(f"/api/jobs/{id_b}/result").status_code == 200
    assert len(_files_in(manager)) == 2


def test_zip_of_results(client) -> None:
    ids = [_submit(client, _png(12 + i, 16, seed=i), "same name.png").get_json()["id"] for i in range(3)]
    for job_id in ids:
        assert _wait(client, job_id)["status"] == "done"
    response = client.get(f"/api/results.zip?ids={','.join(ids)}")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.data)) as bundle:
        names = bundle.namelist()
        assert names == ["same name_restored.png", "same name_restored (2).png", "same name_restored (3).png"]
        for name, job_id in zip(names, ids, strict=True):
            assert bundle.read(name) == client.get(f"/api/jobs/{job_id}/result").data
    assert client.get(f"/api/results.zip?ids={ids[0]},unknown").status_code == 404


def test_full_queue_is_503(pipeline) -> None:
    gated = GatedPipeline(pipeline)
    gated.gate.clear()
    with _app(gated, queue_size=1) as app:
        client = app.test_client()
        first = _submit(client, _png(16, 16, 1)).get_json()["id"]
        deadline = time.monotonic() + WAIT_S
        while client.get(f"/api/jobs/{first}").get_json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = _submit(client, _png(16, 16, 2)).get_json()["id"]
        assert client.get(f"/api/jobs/{second}").get_json()["position"] == 1
        full = _submit(client, _png(16, 16, 3))
        assert full.status_code == 503 and "queue is full" in full.get_json()["error"]
        gated.gate.set()
        assert _wait(client, first)["status"] == "done"
        assert _wait(client, second)["status"] == "done"
        third = _submit(client, _png(16, 16, 3))
        assert third.status_code == 202
        assert _wait(client, third.get_json()["id"])["status"] == "done"


def test_failed_job_reports_error_and_worker_continues(pipeline) -> None:
    broken = GatedPipeline(pipeline, fail=RuntimeError("out of memory on the device"))
    with _app(broken) as app:
        client = app.test_client()
        job_id = _submit(client, _png(16, 16)).get_json()["id"]
        state = _wait(client, job_id)
        assert state["status"] == "failed" and "out of memory" in state["error"]
        response = client.get(f"/api/jobs/{job_id}/result")
        assert response.status_code == 409 and "failed" in response.get_json()["error"]
        broken.fail = None
        job_id = _submit(client, _png(16, 16)).get_json()["id"]
        assert _wait(client, job_id)["status"] == "done"


def test_expired_jobs_are_404_and_their_files_gone(pipeline) -> None:
    now = [0.0]
    manager = JobManager(pipeline, ttl=60.0, clock=lambda: now[0])
    with _app(pipeline, manager=manager) as app:
        client = app.test_client()
        old = _submit(client, _png(16, 16, 1)).get_json()["id"]
        assert _wait(client, old)["status"] == "done"
        now[0] = 30.0
        recent = _submit(client, _png(16, 16, 2)).get_json()["id"]
        assert _wait(client, recent)["status"] == "done"
        assert len(_files_in(manager)) == 4

        now[0] = 61.0
        for path in ("", "/result", "/original"):
            assert client.get(f"/api/jobs/{old}{path}").status_code == 404
        assert client.get(f"/api/jobs/{recent}/result").status_code == 200
        assert len(_files_in(manager)) == 2

        now[0] = 200.0
        assert manager.sweep() == 1
        assert client.get(f"/api/jobs/{recent}").status_code == 404
        assert _files_in(manager) == []


def test_close_removes_the_work_folder(pipeline) -> None:
    manager = JobManager(pipeline)
    with _app(pipeline, manager=manager) as app:
        client = app.test_client()
        job_id = _submit(client, _png(16, 16)).get_json()["id"]
        assert _wait(client, job_id)["status"] == "done"
        assert manager.work_dir.is_dir()
    assert not manager.work_dir.exists()
    with pytest.raises(ManagerClosedError):
        manager.submit(io.BytesIO(_png(8, 8)), "late.png", RestorationOptions())
    response = _submit(app.test_client(), _png(8, 8))
    assert response.status_code == 503


def test_foreign_hosts_and_origins_are_refused(pipeline) -> None:
    with _app(pipeline, trusted_hosts=["localhost", "127.0.0.1"]) as app:
        client = app.test_client()
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/info", headers={"Host": "rebound.example"}).status_code == 400
        response = client.post(
            "/api/jobs",
            data={"image": (io.BytesIO(_png(8, 8)), "a.png")},
            headers={"Origin": "http://evil.example"},
        )
        assert response.status_code == 403 and "cross-origin" in response.get_json()["error"]
        response = client.post(
            "/api/jobs",
            data={"image": (io.BytesIO(_png(8, 8)), "a.png")},
            headers={"Origin": "http://localhost"},
        )
        assert response.status_code == 202


def test_page_and_info(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b'id="drop-zone"' in page.data
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("app.js", "style.css", "icon.svg"):
        assert client.get(f"/static/{asset}").status_code == 200
    info = client.get("/api/info").get_json()
    assert info["modes"] == {"quality": True, "with_scratch": True, "hr": True, "faces": False}
    assert info["max_upload_bytes"] == int(0.25 * 2**20) and info["queue_size"] == 8
    assert info["max_pixels"] > 1_000_000


def test_info_loads_no_network(tiny_weights, monkeypatch) -> None:
    """The page waits for /api/info; it must not wait for every mode's networks to load."""
    fresh = RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False)
    loaded = []
    original = fresh.components.get
    monkeypatch.setattr(fresh.components, "get", lambda c: loaded.append(c) or original(c))
    with _app(fresh) as app:
        info = app.test_client().get("/api/info").get_json()
    assert info["modes"] == {"quality": True, "with_scratch": True, "hr": True, "faces": False}
    assert loaded == []


def test_weights_that_cannot_run_a_mode_are_reported(pipeline) -> None:
    from latent_restore.pipeline import IncompatibleWeightsError

    class Mismatched(GatedPipeline):
        def check_ready(self, options):
            raise IncompatibleWeightsError("vae_a has 8 latent channels, mapping_quality expects 16")

    with _app(Mismatched(pipeline)) as app:
        response = _submit(app.test_client(), _png(16, 16))
    assert response.status_code == 500
    assert (
        "cannot run this mode" in response.get_json()["error"]
        and "latent channels" in response.get_json()["error"]
    )


def test_faces_switch_starts_off_until_the_server_says_so(client) -> None:
    """Before /api/info answers, the page must not claim faces will be enhanced."""
    page = client.get("/").data.decode()
    switch = re.search(r"<input[^>]*id=\"opt-faces\"[^>]*>", page)
    assert switch is not None
    assert "checked" not in switch.group(0) and "disabled" in switch.group(0)


@pytest.mark.parametrize(
    "name,stem",
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\grand-mère été.JPG", "grand-mère été"),
        ("a\r\nb\x00c.png", "a_b_c"),
        (".hidden", "hidden"),
        ("", "photo"),
        (None, "photo"),
        ("....", "photo"),
        ("x" * 300 + ".png", "x" * 80),
        ('"quoted"; name=evil.png', "quoted_name_evil"),
    ],
)
def test_download_stem(name, stem) -> None:
    assert download_stem(name) == stem


def test_loopback_detection() -> None:
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("localhost")
        and is_loopback("::1")
        and is_loopback("127.0.0.9")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_cli_serve_errors(tiny_weights, tmp_path, caplog) -> None:
    assert main(["serve", "--quiet", "--weights", str(tmp_path)]) == 2
    assert "not a weights directory" in caplog.text
    caplog.clear()
    # 192.0.2.1 (TEST-NET-1) is not loopback and not this machine's: warned about, then cannot be bound.
    with caplog.at_level(logging.WARNING):
        code = main(
            ["serve", "--host", "192.0.2.1", "--port", "0", "--no-faces", "--weights", str(tiny_weights)]
        )
    assert code == 2
    assert "not loopback" in caplog.text and "Cannot assign requested address" in caplog.text


# ----------------------------------------------------------------------------------------- cancelling


class BlockingPipeline(RestorationPipeline):
    """A real pipeline that blocks in its first network call (scratch detection or the first tile).

    Counts the tiles of the global stage and the stages entered, so a test can see where a
    cancelled job stopped. The tiny memory limit makes the planner tile a 600 x 600 photo.
    """

    TILES_600 = 9  # 256-pixel tiles overlapping by 64 over 600 pixels: 3 x 3

    def __init__(self, inner: RestorationPipeline) -> None:
        super().__init__(inner.components, None, "cpu", memory_limit=10 << 20)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.tiles = 0
        self.global_calls = 0

    def _block(self) -> None:
        self.entered.set()
        assert self.release.wait(WAIT_S)

    def detect_scratches(self, rgb, *args, **kwargs):
        self._block()
        return super().detect_scratches(rgb, *args, **kwargs)

    def restore_global(self, *args, **kwargs):
        self.global_calls += 1
        return super().restore_global(*args, **kwargs)

    def global_forward(self, *args):
        self.tiles += 1
        self._block()
        return super().global_forward(*args)


def test_blocking_pipeline_tiles_the_photo(pipeline) -> None:
    """The precondition of the cancellation tests: without cancelling, all tiles run."""
    blocking = BlockingPipeline(pipeline)
    blocking.release.set()
    result = blocking(_pixels(600, 600, 5), RestorationOptions(faces=False))
    assert result.path == "tiles 256x256" and blocking.tiles == BlockingPipeline.TILES_600


def test_delete_cancels_a_running_job_between_tiles(pipeline) -> None:
    blocking = BlockingPipeline(pipeline)
    with _app(blocking) as app:
        client, manager = app.test_client(), app.extensions[EXTENSION_KEY]
        running = _submit(client, _png(600, 600, 5), faces="false").get_json()["id"]
        assert blocking.entered.wait(WAIT_S)
        assert client.get(f"/api/jobs/{running}").get_json()["status"] == "running"
        waiting = _submit(client, _png(16, 16, 6), faces="false").get_json()["id"]

        assert client.delete(f"/api/jobs/{running}").status_code == 204
        assert client.get(f"/api/jobs/{running}").status_code == 404
        blocking.release.set()
        assert _wait(client, waiting)["status"] == "done"
        # The cancelled photo stopped after its first tile; the next one ran as one piece.
        assert blocking.tiles == 2
        assert len(_files_in(manager)) == 2  # only the finished job's original and result


def test_delete_cancels_a_running_job_between_stages(pipeline) -> None:
    blocking = BlockingPipeline(pipeline)
    with _app(blocking) as app:
        client, manager = app.test_client(), app.extensions[EXTENSION_KEY]
        running = _submit(client, _png(40, 40, 7), with_scratch="true", faces="false").get_json()["id"]
        assert blocking.entered.wait(WAIT_S)
        assert client.get(f"/api/jobs/{running}").get_json()["stage"] == "scratch detection"
        assert client.delete(f"/api/jobs/{running}").status_code == 204
        blocking.release.set()
        after = _submit(client, _png(16, 16, 8), faces="false").get_json()["id"]
        assert _wait(client, after)["status"] == "done"
        assert blocking.global_calls == 1  # the cancelled job never reached the global stage
        assert len(_files_in(manager)) == 2


def test_progress_moves_within_the_tiled_stage(pipeline) -> None:
    blocking = BlockingPipeline(pipeline)
    seen: list[float] = []
    with _app(blocking) as app:
        manager = app.extensions[EXTENSION_KEY]
        original = manager._tile_done

        def spy(job, done, total):
            original(job, done, total)
            seen.append(job.progress)

        manager._tile_done = spy
        blocking.release.set()
        client = app.test_client()
        job_id = _submit(client, _png(600, 600, 9), faces="false").get_json()["id"]
        assert _wait(client, job_id)["status"] == "done"
    assert len(seen) == BlockingPipeline.TILES_600
    assert seen == sorted(seen) and seen[0] < seen[-1] < 1.0


def test_close_cancels_the_running_job(pipeline) -> None:
    blocking = BlockingPipeline(pipeline)
    manager = JobManager(blocking)
    with _app(blocking, manager=manager) as app:
        _submit(app.test_client(), _png(600, 600, 5), faces="false")
        assert blocking.entered.wait(WAIT_S)
        # Stuck inside one tile: close gives up waiting and says so.
        assert manager.close(timeout=0.2) is False
        assert not manager.work_dir.exists()
        blocking.release.set()
        assert manager.close(timeout=WAIT_S) is True
    assert blocking.tiles == 1 and not manager.work_dir.exists()


# ----------------------------------------------------------------------------------------- faces


def test_faces_without_a_face_model(client, pipeline) -> None:
    response = _submit(client, _png(16, 16), faces="true")
    assert response.status_code == 400 and "face enhancement is not available" in response.get_json()["error"]
    response = _submit(client, _png(16, 16))  # no field: faces default to what the server can do
    assert response.status_code == 202
    state = _wait(client, response.get_json()["id"])
    assert state["status"] == "done" and state["options"]["faces"] is False and state["notes"] == []

    # Through the manager (no API in between), the job says what was not done.
    manager = client.application.extensions[EXTENSION_KEY]
    job = manager.submit(io.BytesIO(_png(16, 16)), "a.png", RestorationOptions(faces=True))
    assert job.options.faces is False and job.notes == [
        "faces were not enhanced: the server has no face model"
    ]


def test_faces_default_on_with_a_face_model(pipeline) -> None:
    gated = GatedPipeline(pipeline)
    gated.face_enhancer = object()  # GatedPipeline never calls it
    with _app(gated) as app:
        client = app.test_client()
        assert client.get("/api/info").get_json()["modes"]["faces"] is True
        state = _submit(client, _png(16, 16)).get_json()
        assert state["options"]["faces"] is True
        assert _wait(client, state["id"])["status"] == "done"


# ----------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--port", "70000"], "between 0 and 65535"),
        (["--port", "-1"], "between 0 and 65535"),
        (["--port", "http"], "whole number"),
        (["--max-pixels", "0"], "positive"),
        (["--max-pixels", "lots"], "expected a number"),
        (["--queue-size", "0"], "positive"),
        (["--max-upload-mb", "-5"], "above 0"),
        (["--ttl-minutes", "0"], "above 0"),
    ],
)
def test_cli_serve_rejects_bad_numbers(arguments, message, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", *arguments])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_cli_serve_max_pixels_reaches_the_server(tiny_weights, monkeypatch) -> None:
    assert build_parser().parse_args(["serve", "--max-pixels", "3e6"]).max_pixels == 3_000_000
    seen = {}

    def fake_serve(pipeline, **kwargs):
        with _app(pipeline) as app:
            seen["limit"] = app.extensions[EXTENSION_KEY].max_pixels
        return True

    monkeypatch.setattr("latent_restore.web.app.serve", fake_serve)
    code = main(["serve", "--quiet", "--no-faces", "--max-pixels", "5e6", "--weights", str(tiny_weights)])
    assert code == 0 and seen["limit"] == 5_000_000


# ----------------------------------------------------------------------------------------- processes


def test_next_start_removes_folders_of_killed_servers(pipeline, tmp_path, caplog) -> None:
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from latent_restore.web.jobs import JobManager\n"
            "manager = JobManager(None, max_pixels=1, temp_root=sys.argv[1])\n"
            "(manager.work_dir / 'photo.upload').write_bytes(b'private')\n"
            "print(manager.work_dir, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stale = Path(killed.stdout.strip())
    assert (stale / "photo.upload").is_file()
    unlocked = tmp_path / f"{WORK_DIR_PREFIX}no-lock"  # not recognisably a dead server's: kept
    unlocked.mkdir()
    other = tmp_path / "someone-else"
    other.mkdir()

    with caplog.at_level(logging.INFO), JobManager(pipeline, temp_root=tmp_path) as alive:
        assert not stale.exists()
        assert "left by a server that was killed" in caplog.text
        with JobManager(pipeline, temp_root=tmp_path) as second:  # a live server's folder is kept
            assert alive.work_dir.is_dir() and second.work_dir.is_dir()
        assert unlocked.is_dir() and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([unlocked.name, other.name])


SLOW_SERVER = """
import sys, time
import torch
import latent_restore.pipeline as pipeline_module
from latent_restore.cli import main

interruptible = sys.argv[1] == "tiles"


class Slow(pipeline_module.RestorationPipeline):
    def restore_global(self, *args, **kwargs):
        print("SLOW STAGE STARTED", file=sys.stderr, flush=True)
        a = torch.rand(192, 192)
        deadline, done = time.monotonic() + 120, 0
        while time.monotonic() < deadline:
            a = torch.tanh(a @ a)
            done += 1
            callback = getattr(self, "tile_callback", None)
            if interruptible and callback is not None:
                callback(done, 10**9)
        return super().restore_global(*args, **kwargs)


pipeline_module.RestorationPipeline = Slow
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("kind", ["tiles", "one long stage"])
def test_sigterm_during_a_job_shuts_down_cleanly(tiny_weights, tmp_path, kind) -> None:
    """SIGTERM while a photo is restored: exit 0, no abort, no temporary files left."""
    script = tmp_path / "slow_server.py"
    script.write_text(SLOW_SERVER)
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    command = [sys.executable, str(script), "tiles" if kind == "tiles" else "stuck", "serve"]
    command += ["--port", "0", "--device", "cpu", "--no-faces", "--weights", str(tiny_weights)]
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if match and not url:
                url.append(match.group(1).rstrip("/"))
            if "SLOW STAGE STARTED" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not url:
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        status, body = _post_live(url[0], _png(24, 24), faces="false")
        assert status == 202, body
        assert started.wait(WAIT_S), "".join(lines)
        assert len(list(temp.glob(f"{WORK_DIR_PREFIX}*"))) == 1
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(WAIT_S)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(5)
    log = "".join(lines)
    assert code == 0, log
    assert "terminate called" not in log and "Traceback" not in log
    assert list(temp.glob(f"{WORK_DIR_PREFIX}*")) == [], "the server left its temporary files behind"
    if kind == "tiles":
        assert "stopped after" in log and elapsed < 4.0, log
    else:
        assert "abandoned" in log and elapsed < 9.0, log
