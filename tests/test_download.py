"""``latent-restore download`` against a release server on 127.0.0.1, and weights resolution.

The server (in a thread of the test process) serves zips built in the official layout from
rule-generated weights; it can cut a transfer midway, serve an HTML page, ignore ranges, and
records the ``Range`` header of every request.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import manifest_path, write_official_tree
from PIL import Image

from latent_restore import download as download_module
from latent_restore.cli import main
from latent_restore.convert import STAGING_PREFIX
from latent_restore.download import DownloadError, fetch
from latent_restore.weights import (
    HOME_ENV,
    WEIGHTS_ENV,
    ResolvedWeights,
    WeightsOrigin,
    data_home,
    default_weights_dir,
    downloaded_weights_dir,
    file_sha256,
    resolve_weights,
)

GLOBAL_IDS = [
    "VAE_A_quality",
    "VAE_B_quality",
    "VAE_B_scratch",
    "mapping_quality",
    "mapping_scratch",
    "mapping_Patch_Attention",
    "detection_FT_Epoch_latest",
]
FACE_IDS = ["face_Setting_9_epoch_100", "face_FaceSR_512"]
SALT = 31337
PREFIX = "/microsoft/releases/download/v1.0"


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up early (the refusal tests do) is expected here."""


class ReleaseServer:
    """A tiny HTTP server of named files with failure modes, recording what it was asked.

    Attributes:
        files: URL path -> file on disk or bytes.
        cut_once: URL path -> bytes to send before dropping the connection (once).
        html: URL paths answered with an HTML error page (status 200, as captive portals do).
        ignore_range: answer 200 with the whole file even to a Range request.
        requests: ``(path, Range header or None)`` of every request, in order.
    """

    def __init__(self) -> None:
        self.files: dict[str, Path | bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.html: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                server.answer(self)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url_base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{PREFIX}"

    def add(self, name: str, content: Path | bytes) -> None:
        self.files[f"{PREFIX}/{name}"] = content

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path in self.html:
            page = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
            handler.send_response(200)
            handler.send_header("Content-Type", "text/html; charset=utf-8")
            handler.send_header("Content-Length", str(len(page)))
            handler.end_headers()
            handler.wfile.write(page)
            return
        if path not in self.files:
            handler.send_error(404)
            return
        content = self.files[path]
        size = content.stat().st_size if isinstance(content, Path) else len(content)
        start = 0
        header = handler.headers.get("Range")
        if header and not self.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= size:
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{size}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(size - start))
        handler.end_headers()
        limit = self.cut_once.pop(path, None)
        to_send = size - start if limit is None else max(0, limit - start)
        with _open(content) as source:
            source.seek(start)
            while to_send > 0:
                block = source.read(min(to_send, 1 << 20))
                if not block:
                    break
                handler.wfile.write(block)
                to_send -= len(block)
        if limit is not None:
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ReleaseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _open(content: Path | bytes):
    import io

    return open(content, "rb") if isinstance(content, Path) else io.BytesIO(content)


@pytest.fixture
def server() -> Iterator[ReleaseServer]:
    with ReleaseServer() as running:
        yield running


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private data folder (and no weights or proxy settings from the environment)."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path / "home"


def _assert_no_downloaded_set(home: Path) -> None:
    """A refused download leaves nothing the resolver would pick up, not even a staging folder."""
    assert not downloaded_weights_dir().exists()
    resolved = resolve_weights()
    assert resolved is None or resolved.origin is not WeightsOrigin.DOWNLOADED
    if home.exists():
        assert not list(home.glob(f"{STAGING_PREFIX}*"))


def _download(server: ReleaseServer, *extra: str) -> int:
    return main(["download", "--quiet", "--url-base", server.url_base, *extra])


# --- data folder and resolution ----------------------------------------------------------------


def test_data_folder_follows_the_override_then_xdg(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "mine"))
    assert data_home() == tmp_path / "mine"
    monkeypatch.delenv(HOME_ENV)
    if os.name == "posix" and os.uname().sysname != "Darwin":
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        assert data_home() == tmp_path / "xdg" / "latent-restore"
        monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
        assert data_home() == Path.home() / ".local" / "share" / "latent-restore"


def test_resolution_order(tmp_path, home, monkeypatch, tiny_weights) -> None:
    downloaded = downloaded_weights_dir()
    if default_weights_dir() is not None:
        assert resolve_weights().origin is WeightsOrigin.BUILT_IN
    shutil.copytree(tiny_weights, downloaded)
    assert resolve_weights() == ResolvedWeights(downloaded, WeightsOrigin.DOWNLOADED)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "from_env"))
    assert resolve_weights().path == tmp_path / "from_env"
    assert resolve_weights().origin is WeightsOrigin.ENVIRONMENT
    assert resolve_weights(tmp_path / "given").origin is WeightsOrigin.ARGUMENT


def test_python_api_resolves_like_the_command_line(tmp_path, home, monkeypatch, tiny_weights) -> None:
    from latent_restore.pipeline import RestorationPipeline

    shutil.copytree(tiny_weights, downloaded_weights_dir())
    pipeline = RestorationPipeline.from_pretrained(device="cpu", faces=False)
    assert pipeline.components.weights_dir == downloaded_weights_dir()
    monkeypatch.setenv(WEIGHTS_ENV, str(tiny_weights))
    assert (
        RestorationPipeline.from_pretrained(device="cpu", faces=False).components.weights_dir == tiny_weights
    )


def test_built_in_set_is_announced_as_a_demonstration(home, caplog) -> None:
    if default_weights_dir() is None:
        pytest.skip("this installation has no built-in weights")
    with caplog.at_level(logging.INFO, logger="latent_restore"):
        resolved = resolve_weights()
    assert resolved.origin is WeightsOrigin.BUILT_IN
    assert "demonstration" in caplog.text and "latent-restore download" in caplog.text


def test_weights_lists_sets_with_their_modes(home, tiny_weights, capsys) -> None:
    shutil.copytree(tiny_weights, downloaded_weights_dir())
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert f"* {WeightsOrigin.DOWNLOADED.value}: {downloaded_weights_dir()}" in out
    assert "modes: quality, scratch, HR, faces 256" in out
    if default_weights_dir() is not None:
        assert f"  {WeightsOrigin.BUILT_IN.value}: {default_weights_dir()}" in out


# --- fetch: resume, size and content checks ----------------------------------------------------


def test_fetch_resumes_an_interrupted_transfer_with_a_range_request(tmp_path, home, server) -> None:
    payload = b"PK\x03\x04" + np.random.default_rng(0).bytes(3 << 20)
    server.add("blob.zip", payload)
    server.cut_once[f"{PREFIX}/blob.zip"] = 1 << 20
    dest = tmp_path / "blob.zip"
    with pytest.raises(DownloadError, match=r"(broke off|stopped) .*run the same command again"):
        fetch(f"{server.url_base}/blob.zip", dest, progress=False)
    assert not dest.exists()
    partial = dest.with_name("blob.zip.partial")
    assert partial.stat().st_size == 1 << 20
    result = fetch(f"{server.url_base}/blob.zip", dest, progress=False)
    assert server.requests[-1] == (f"{PREFIX}/blob.zip", f"bytes={1 << 20}-")
    assert result.resumed_from == 1 << 20
    assert dest.read_bytes() == payload
    assert not partial.exists()


def test_fetch_starts_over_when_the_server_ignores_ranges(tmp_path, home, server) -> None:
    payload = b"PK\x03\x04" + bytes(range(256)) * 1000
    server.add("blob.zip", payload)
    server.ignore_range = True
    dest = tmp_path / "blob.zip"
    dest.with_name("blob.zip.partial").write_bytes(b"PK\x03\x04stale bytes of another version")
    assert fetch(f"{server.url_base}/blob.zip", dest, progress=False).resumed_from == 0
    assert dest.read_bytes() == payload


def test_fetch_finishes_a_partial_file_that_is_already_complete(tmp_path, home, server) -> None:
    payload = b"PK\x03\x04" + bytes(1000)
    server.add("blob.zip", payload)
    dest = tmp_path / "blob.zip"
    dest.with_name("blob.zip.partial").write_bytes(payload)
    fetch(f"{server.url_base}/blob.zip", dest, progress=False)
    assert dest.read_bytes() == payload


# --- refused downloads -------------------------------------------------------------------------


def _serve_zip(server: ReleaseServer, tmp_path: Path, name: str, members: list) -> None:
    path = tmp_path / "served" / name
    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    server.add(name, path)


def _symlink_member(name: str) -> zipfile.ZipInfo:
    import stat

    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


VAE_MEMBER = "checkpoints/restoration/VAE_A_quality/latest_net_G.pth"


def _unknown_variant() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"body.0.weight": torch.zeros(3, 3)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "members,code,message",
    [
        ([("../" + VAE_MEMBER, b"x")], 2, "points outside the archive"),
        ([("/" + VAE_MEMBER, b"x")], 2, "absolute path"),
        ([(_symlink_member(VAE_MEMBER), b"/etc/passwd")], 2, "symbolic link"),
        ([(VAE_MEMBER, _unknown_variant())], 2, "unknown checkpoint variant"),
        ([("README.txt", b"no checkpoints here")], 2, "no released checkpoints"),
    ],
    ids=["dotdot", "absolute", "symlink", "unknown-variant", "no-checkpoints"],
)
def test_refused_archive(tmp_path, home, server, caplog, members, code, message) -> None:
    _serve_zip(server, tmp_path, "global_checkpoints.zip", members)
    with caplog.at_level(logging.ERROR):
        assert _download(server, "--only", "global") == code
    assert message in caplog.text
    _assert_no_downloaded_set(home)
    assert not (home / "downloads" / "global_checkpoints.zip").exists()


def test_refused_declared_size_above_the_bound(tmp_path, home, server, caplog) -> None:
    import struct

    _serve_zip(
        server, tmp_path, "global_checkpoints.zip", [(VAE_MEMBER, b"a" * 64), ("other.pth", b"b" * 64)]
    )
    path = server.files[f"{PREFIX}/global_checkpoints.zip"]
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        struct.pack_into("<I", data, start + 24, 3 << 30)
        start = data.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        assert _download(server, "--only", "global") == 2
    assert "uncompressed bytes" in caplog.text and "zip bomb" in caplog.text
    _assert_no_downloaded_set(home)


@pytest.mark.parametrize("labelled", [True, False], ids=["text/html", "octet-stream"])
def test_refused_html_page_instead_of_a_zip(home, server, caplog, labelled) -> None:
    if labelled:
        server.html.add(f"{PREFIX}/global_checkpoints.zip")
    else:
        server.add("global_checkpoints.zip", b"<!DOCTYPE html><html>Not Found</html>")
    with caplog.at_level(logging.ERROR):
        assert _download(server) == 2
    assert "HTML page" in caplog.text
    _assert_no_downloaded_set(home)
    assert not list((home / "downloads").glob("*"))


def test_refused_truncated_download_keeps_the_partial_file(tmp_path, home, server, caplog) -> None:
    _serve_zip(server, tmp_path, "global_checkpoints.zip", [(VAE_MEMBER, bytes(200_000))])
    server.cut_once[f"{PREFIX}/global_checkpoints.zip"] = 50_000
    with caplog.at_level(logging.ERROR):
        assert _download(server) == 1
    assert "run the same command again to resume" in caplog.text
    _assert_no_downloaded_set(home)
    assert (home / "downloads" / "global_checkpoints.zip.partial").stat().st_size == 50_000
    assert not (home / "downloads" / "global_checkpoints.zip").exists()


def test_refused_complete_but_corrupt_zip(home, server, caplog) -> None:
    server.add("global_checkpoints.zip", b"PK\x03\x04" + bytes(5000))
    with caplog.at_level(logging.ERROR):
        assert _download(server) == 2
    assert "not a readable zip archive" in caplog.text
    _assert_no_downloaded_set(home)


def test_refused_when_offline_names_the_manual_route(home, caplog) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with caplog.at_level(logging.ERROR):
        assert main(["download", "--quiet", "--url-base", f"http://127.0.0.1:{port}/x"]) == 1
    assert "cannot reach" in caplog.text
    assert "convert --official global_checkpoints.zip face_checkpoints.zip" in caplog.text
    _assert_no_downloaded_set(home)


def test_refused_missing_asset_and_bad_scheme(home, server, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        assert _download(server) == 1
        assert main(["download", "--url-base", "file:///etc"]) == 2
    assert "404" in caplog.text and "https://" in caplog.text
    _assert_no_downloaded_set(home)


def test_incomplete_release_archive_is_refused(tmp_path, home, server, caplog) -> None:
    """A global archive must give every global component (the stand-in for a checksum)."""
    try:
        tree = write_official_tree(tmp_path / "tree", ["VAE_A_quality"], SALT)
    except FileNotFoundError as exc:
        pytest.skip(f"the checkpoint manifest (../shared/spec) is missing: {exc}")
    _serve_zip(
        server,
        tmp_path,
        "global_checkpoints.zip",
        [(VAE_MEMBER, (tree / "Global" / VAE_MEMBER).read_bytes())],
    )
    with caplog.at_level(logging.ERROR):
        assert _download(server, "--only", "global") == 2
    assert "not a complete global_checkpoints.zip: no checkpoint for mapping_hr" in caplog.text
    _assert_no_downloaded_set(home)


# --- the whole route with full-size rule-generated release archives ---------------------------


def _zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    """The two release zips (official layout, rule-generated weights) and their unzipped trees."""
    try:
        manifest_path()
    except FileNotFoundError as exc:
        pytest.skip(f"the checkpoint manifest (../shared/spec) is missing: {exc}")
    base = tmp_path_factory.mktemp("release")
    root = write_official_tree(base / "repo", GLOBAL_IDS + FACE_IDS, SALT)
    return {
        "global_tree": root / "Global",
        "face_tree": root / "Face_Enhancement",
        "global_zip": _zip_folder(root / "Global", base / "global_checkpoints.zip"),
        "face_zip": _zip_folder(root / "Face_Enhancement", base / "face_checkpoints.zip"),
    }


@pytest.fixture(scope="module")
def tree_weights(release, tmp_path_factory) -> Path:
    """The reference: ``convert`` of the unzipped trees."""
    out = tmp_path_factory.mktemp("tree_weights") / "weights"
    code = main(
        [
            "convert",
            "--quiet",
            "--official",
            str(release["global_tree"]),
            str(release["face_tree"]),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def _files(weights: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(weights)): p.read_bytes()
        for p in sorted(weights.rglob("*"))
        if p.is_file() and p.name != "source.json"
    }


def _assert_same_set(a: Path, b: Path) -> None:
    files_a, files_b = _files(a), _files(b)
    assert sorted(files_a) == sorted(files_b)
    assert len([k for k in files_a if k.endswith("model.safetensors")]) == 9
    for name in files_a:
        assert files_a[name] == files_b[name], name


@pytest.mark.slow
def test_convert_release_zips_equals_the_unzipped_trees(release, tree_weights, tmp_path) -> None:
    out = tmp_path / "weights"
    code = main(
        [
            "convert",
            "--quiet",
            "--official",
            str(release["global_zip"]),
            str(release["face_zip"]),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    _assert_same_set(out, tree_weights)
    from safetensors.torch import load_file

    for component in ("vae_a", "mapping_hr", "face_512"):
        ours, ref = (
            load_file(out / component / "model.safetensors"),
            load_file(tree_weights / component / "model.safetensors"),
        )
        assert ours.keys() == ref.keys()
        assert all(torch.equal(ours[k], ref[k]) for k in ours)


def _tiny_photo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(folder / "photo.png")
    return folder


@pytest.mark.slow
def test_download_resumes_then_run_uses_it_without_weights_flag(
    release, tree_weights, tmp_path, home, server, caplog, capsys
) -> None:
    server.add("global_checkpoints.zip", release["global_zip"])
    server.add("face_checkpoints.zip", release["face_zip"])
    cut = release["global_zip"].stat().st_size // 3
    server.cut_once[f"{PREFIX}/global_checkpoints.zip"] = cut

    with caplog.at_level(logging.ERROR):
        assert _download(server) == 1
    assert "run the same command again to resume" in caplog.text
    _assert_no_downloaded_set(home)
    assert (home / "downloads" / "global_checkpoints.zip.partial").stat().st_size == cut

    assert _download(server) == 0
    assert (f"{PREFIX}/global_checkpoints.zip", f"bytes={cut}-") in server.requests
    assert [r for r in server.requests if r[0].endswith("face_checkpoints.zip")] == [
        (f"{PREFIX}/face_checkpoints.zip", None)
    ]
    weights = downloaded_weights_dir()
    _assert_same_set(weights, tree_weights)
    source = json.loads((weights / "source.json").read_text())
    for key in ("global_zip", "face_zip"):
        name = release[key].name
        digest = file_sha256(release[key])
        assert source["downloaded"][name] == {"url": f"{server.url_base}/{name}", "sha256": digest}
    assert not (home / "downloads").exists()

    assert main(["weights", "--verify"]) == 0
    listing = capsys.readouterr().out
    assert f"* {WeightsOrigin.DOWNLOADED.value}: {weights}" in listing
    assert "modes: quality, scratch, HR, faces 256, faces 512" in listing
    assert "verified: every component matches source.json" in listing

    photos = _tiny_photo(tmp_path / "photos")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="latent_restore"):
        assert main(["run", "--quiet", "--input", str(photos), "--output", str(tmp_path / "auto")]) == 0
    assert str(weights) in caplog.text and WeightsOrigin.DOWNLOADED.value in caplog.text
    assert (
        main(
            [
                "run",
                "--quiet",
                "--input",
                str(photos),
                "--output",
                str(tmp_path / "ref"),
                "--weights",
                str(tree_weights),
            ]
        )
        == 0
    )
    auto = np.asarray(Image.open(tmp_path / "auto" / "photo.png"))
    ref = np.asarray(Image.open(tmp_path / "ref" / "photo.png"))
    assert auto.shape == (36, 44, 3)
    np.testing.assert_array_equal(auto, ref)


@pytest.mark.slow
def test_download_only_face_keeps_the_global_components(release, tree_weights, home, server) -> None:
    """``--only face`` into an existing set replaces the face components and keeps the rest."""
    shutil.copytree(tree_weights, downloaded_weights_dir())
    (downloaded_weights_dir() / "face_512" / "model.safetensors").write_bytes(b"tampered")
    server.add("face_checkpoints.zip", release["face_zip"])
    assert _download(server, "--only", "face", "--keep-archives") == 0
    assert [r[0] for r in server.requests] == [f"{PREFIX}/face_checkpoints.zip"]
    _assert_same_set(downloaded_weights_dir(), tree_weights)
    assert (home / "downloads" / "face_checkpoints.zip").is_file()


def test_module_constants_name_the_release_assets() -> None:
    assert download_module.DEFAULT_URL_BASE.startswith("https://")
    assert download_module.archive_url("https://x/y/", download_module.ReleaseKind.FACE) == (
        "https://x/y/face_checkpoints.zip"
    )
