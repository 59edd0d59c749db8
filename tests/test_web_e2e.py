"""The web page in headless Chromium, against a real ``latent-restore serve`` process.

Uploads real old photos (one through the file chooser, one dropped on the page), waits for both,
checks that the before/after view shows two loaded images, downloads a result and the zip of all
results, saves screenshots as test artefacts, and finally checks that stopping the server removes
its temporary files.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import DATA, REPO
from PIL import Image

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHOSEN = DATA / "real_old" / "ddcolor_Helen_Keller_meeting_Charlie_Chaplin_in_1919.jpg"
DROPPED = DATA / "real_old" / "swinir_realsrset_Lincoln.png"
STARTUP_S = 90.0
WAIT_MS = 90_000


def _missing_browser() -> str | None:
    if sync_playwright is None:
        return "the playwright Python package is not installed (pip install playwright)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def _missing_photos() -> str | None:
    if not CHOSEN.is_file() or not DROPPED.is_file():
        return f"the real photos are missing from {DATA / 'real_old'}"
    return None


@pytest.fixture
def browser_ready() -> None:
    """Skip without the browser or the photos; under CI only missing photos may skip it.

    CI installs the browser itself, so its absence there is a broken install, not a reason to skip;
    the photos come from ``../shared``, which a clone without it lacks, like every data test.
    """
    reason = _missing_browser()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but {reason}")
        pytest.skip(reason)
    reason = _missing_photos()
    if reason is not None:
        pytest.skip(reason)


@contextmanager
def _server(weights: Path, temp: Path) -> Iterator[tuple[str, subprocess.Popen, list[str]]]:
    """``latent-restore serve`` on a free loopback port, with its temporary folder under ``temp``."""
    command = [sys.executable, "-m", "latent_restore.cli", "serve", "--port", "0", "--device", "cpu"]
    command += ["--no-faces", "--weights", str(weights)]
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if match and not url:
                url.append(match.group(1))
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + STARTUP_S
        while not found.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the server did not start:\n" + "".join(lines))
        yield url[0], process, lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)


def _save_artefact(path: Path) -> None:
    target = os.environ.get("LATENT_RESTORE_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / path.name)


def _drop(page, path: Path) -> None:
    """Drop ``path`` on the drop zone the way a file manager does (a DataTransfer holding a File)."""
    payload = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            return transfer;
        }""",
        [payload, path.name],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def test_upload_compare_download_in_chromium(browser_ready, tiny_weights, tmp_path) -> None:
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    chosen_size = Image.open(CHOSEN).size
    dropped_size = Image.open(DROPPED).size

    with _server(tiny_weights, temp) as (url, process, log), sync_playwright() as playwright:
        assert len(list(temp.glob("latent-restore-web-*"))) == 1
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)

            # Settings that never arrive: the page must not claim faces are enhanced.
            page.route("**/api/info", lambda route: route.abort())
            page.goto(url)
            expect(page.locator("html")).to_have_attribute("data-ready", "true")
            expect(page.locator("#opt-faces")).not_to_be_checked()
            expect(page.locator("#opt-faces")).to_be_disabled()
            page.unroute("**/api/info")
            problems.clear()  # the refused request's console message
            page.reload()
            expect(page.locator("html")).to_have_attribute("data-ready", "true")
            expect(page.locator("#opt-faces")).to_be_disabled()  # served with --no-faces
            expect(page.locator("#drop-hint")).to_contain_text("megapixels")

            with page.expect_file_chooser() as chooser:
                page.get_by_text("choose files").click()
            chooser.value.set_files(str(CHOSEN))
            _drop(page, DROPPED)

            expect(page.locator(".job")).to_have_count(2)
            expect(page.locator(".job.done")).to_have_count(2, timeout=WAIT_MS)
            card = page.locator(".job", has_text=CHOSEN.stem[:12])
            expect(card.locator(".job-status")).to_have_text(
                f"Restored · {chosen_size[0]} × {chosen_size[1]}"
            )
            card.locator(".thumb-button").click()

            before, after = page.locator("#compare-before"), page.locator("#compare-after")
            for image in (before, after):
                expect(image).to_be_visible()
                expect(image).to_have_js_property("complete", True)
                expect(image).to_have_js_property("naturalWidth", chosen_size[0])
                expect(image).to_have_js_property("naturalHeight", chosen_size[1])
            assert "/original" in before.get_attribute("src") and "/result" in after.get_attribute("src")

            page.locator("#compare-range").fill("35")
            expect(page.locator("#frame")).to_have_attribute("style", re.compile(r"--pos:\s*35%"))
            screenshot = tmp_path / "web_page.png"
            page.screenshot(path=screenshot, full_page=True, animations="disabled")
            _save_artefact(screenshot)
            page.click("#mode-side")
            expect(page.locator("#compare")).to_have_class(re.compile("side-mode"))
            side = tmp_path / "web_page_side_by_side.png"
            page.screenshot(path=side, full_page=True, animations="disabled")
            _save_artefact(side)

            with page.expect_download() as download:
                page.click("#viewer-download")
            assert download.value.suggested_filename == f"{CHOSEN.stem}_restored.png"
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            with Image.open(saved) as result:
                assert result.format == "PNG" and result.size == chosen_size

            with page.expect_download() as download:
                page.click("#download-all")
            with zipfile.ZipFile(download.value.path()) as bundle:
                sizes = {}
                for name in bundle.namelist():
                    with Image.open(io.BytesIO(bundle.read(name))) as image:
                        assert image.format == "PNG"
                        sizes[name] = image.size
            assert sizes == {
                f"{CHOSEN.stem}_restored.png": chosen_size,
                f"{DROPPED.stem}_restored.png": dropped_size,
            }
            assert problems == []
        finally:
            browser.close()

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, "".join(log)
    assert list(temp.glob("latent-restore-web-*")) == [], "the server left its temporary files behind"
