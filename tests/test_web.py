"""The web page's JSON API and job queue: limits, validation, isolation, concurrency, expiry, faces."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from web_support import (
    WAIT_S,
    GatedPipeline,
    _app,
    _decode,
    _expected,
    _files_in,
    _http,
    _live,
    _pixels,
    _png,
    _png_header_only,
    _post_live,
    _still_serving,
    _submit,
    _wait,
    _wait_live,
    tiny_pipeline,
)

from latent_restore.cli import main
from latent_restore.pipeline import RestorationOptions, RestorationPipeline
from latent_restore.web.app import EXTENSION_KEY, download_stem, is_loopback
from latent_restore.web.jobs import JobManager, ManagerClosedError


@pytest.fixture(scope="module")
def pipeline(tiny_weights):
    return tiny_pipeline(tiny_weights)


@pytest.fixture(scope="module")
def reference(tiny_weights):
    """A second pipeline over the same weights, so expected outputs never share the server's instance."""
    return tiny_pipeline(tiny_weights)


@pytest.fixture
def client(pipeline):
    with _app(pipeline, max_upload_mb=0.25, queue_size=8) as app:
        yield app.test_client()


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
