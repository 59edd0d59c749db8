"""The web server's lifecycle: cancelling running jobs, the serve flags, killed and stopped servers."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO
from web_support import (
    WAIT_S,
    _app,
    _files_in,
    _pixels,
    _png,
    _post_live,
    _submit,
    _wait,
    tiny_pipeline,
)

from latent_restore.cli import build_parser, main
from latent_restore.pipeline import RestorationOptions, RestorationPipeline
from latent_restore.web.app import EXTENSION_KEY
from latent_restore.web.jobs import WORK_DIR_PREFIX, JobManager


@pytest.fixture(scope="module")
def pipeline(tiny_weights):
    return tiny_pipeline(tiny_weights)


@pytest.fixture
def client(pipeline):
    with _app(pipeline, max_upload_mb=0.25, queue_size=8) as app:
        yield app.test_client()


class BlockingPipeline(RestorationPipeline):
    """A real pipeline that blocks in its first network call (scratch detection or the first tile).

    Counts the tiles of the global stage and the stages entered, so a test can see where a
    cancelled job stopped. The tiny memory limit makes the planner tile a 600 x 600 photo.
    """

    TILES_600 = 4  # the memory plan's least-area split of 600 pixels: 2 x 2 tiles of 332 overlapping by 64

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
    assert result.path == "tiles 332x332" and blocking.tiles == BlockingPipeline.TILES_600


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
            progress = kwargs.get("progress")
            if interruptible and progress is not None:
                progress.on_tile(done, 10**9)
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
