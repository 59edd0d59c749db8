"""Folder runs: bad inputs, metadata, atomic outputs, interruption, sharding."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_restore.batch import collect_inputs, output_names, run_batch, shard
from latent_restore.cli import main
from latent_restore.core.imaging import ImageReadError, read_photo
from latent_restore.pipeline import RestorationOptions, RestorationPipeline


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _bad_input_folder(folder: Path) -> None:
    folder.mkdir()
    Image.fromarray(_pixels(40, 50, 1)).save(folder / "good_one.png")
    Image.fromarray(_pixels(30, 20, 2)).save(folder / "good_two.jpg", quality=90)
    (folder / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(_pixels(64, 64, 3)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.jpg").write_text("not a photo at all")
    Image.fromarray((np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(np.concatenate([_pixels(20, 20, 4), np.full((20, 20, 1), 200, np.uint8)], 2)).save(
        folder / "rgba.png"
    )
    Image.fromarray(_pixels(20, 20, 5)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        folder / "palette.png"
    )
    Image.fromarray(_pixels(20, 28, 6)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(_pixels(1, 1, 7)).save(folder / "tiny.png")
    rotated = Image.fromarray(_pixels(16, 40, 8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated.save(folder / "rotated.jpg", exif=exif.tobytes())
    (folder / ".DS_Store").write_bytes(b"\x00\x01binary")
    Image.fromarray(_pixels(12, 12, 9)).save(folder / "grand-mère_été.png")
    (folder / "readme.txt").write_text("ignored")


@pytest.fixture(scope="module")
def pipeline(tiny_weights):
    return RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False)


def test_bad_input_folder(tmp_path, tiny_weights, caplog) -> None:
    inputs = tmp_path / "in"
    _bad_input_folder(inputs)
    before = _digest(inputs)
    code = main(
        [
            "run",
            "--quiet",
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "out"),
            "--weights",
            str(tiny_weights),
        ]
    )
    assert code == 1
    assert _digest(inputs) == before
    out = tmp_path / "out"
    restored = {
        "good_one",
        "good_two",
        "deep16",
        "rgba",
        "palette",
        "cmyk",
        "tiny",
        "rotated",
        "grand-mère_été",
    }
    assert {p.stem for p in out.glob("*.png")} == restored
    with Image.open(out / "rotated.png") as im:
        assert im.size == (16, 40)  # EXIF orientation applied: 40 wide x 16 high becomes 16 x 40
    with Image.open(out / "rgba.png") as im:
        assert im.mode == "RGBA" and im.size == (20, 20)
    with Image.open(out / "deep16.png") as im:
        assert im.mode == "L" and im.size == (32, 24)
    with Image.open(out / "tiny.png") as im:
        assert im.size == (1, 1)
    messages = caplog.text
    assert "empty.png" in messages and "empty file" in messages
    assert "truncated.jpg" in messages and "notes.jpg" in messages and "not an image" in messages


def test_reader_reasons(tmp_path) -> None:
    _bad_input_folder(tmp_path / "in")
    with pytest.raises(ImageReadError, match="empty"):
        read_photo(tmp_path / "in" / "empty.png")
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_photo(tmp_path / "in" / "truncated.jpg")
    deep = read_photo(tmp_path / "in" / "deep16.png")
    assert deep.bit_depth == 16 and deep.gray_file and deep.rgb.max() > 0.5
    cmyk = read_photo(tmp_path / "in" / "cmyk.jpg")
    assert cmyk.rgb.shape == (20, 28, 3)


def test_16_bit_colour_png_keeps_precision(tmp_path) -> None:
    import cv2

    deep = (np.random.default_rng(0).integers(0, 65535, (10, 12, 3))).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep[..., ::-1])
    photo = read_photo(tmp_path / "deep.png")
    assert photo.bit_depth == 16
    np.testing.assert_allclose(photo.rgb, deep / 65535.0, atol=1e-6)


def test_icc_and_exif_are_carried(tmp_path, pipeline) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.fromarray(_pixels(24, 24))
    exif = image.getexif()
    exif[0x010F] = "Kodak"
    (tmp_path / "in").mkdir()
    image.save(tmp_path / "in" / "meta.jpg", icc_profile=icc, exif=exif.tobytes())
    summary = run_batch(
        pipeline, tmp_path / "in", tmp_path / "out", RestorationOptions(), show_progress=False
    )
    assert summary.exit_code == 0
    with Image.open(tmp_path / "out" / "meta.png") as out:
        assert out.info.get("icc_profile") == icc
        assert out.getexif().get(0x010F) == "Kodak"


def test_unwritable_output_fails_before_work(tmp_path, tiny_weights) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(_pixels(8, 8)).save(tmp_path / "in" / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(
        [
            "run",
            "--quiet",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(blocker / "sub"),
            "--weights",
            str(tiny_weights),
        ]
    )
    assert code == 2


def test_rerun_skips_done_and_overwrite_redoes(tmp_path, pipeline) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(_pixels(16, 16, 1)).save(tmp_path / "in" / "a.png")
    Image.fromarray(_pixels(16, 16, 2)).save(tmp_path / "in" / "sub" / "b.jpg")
    opts = RestorationOptions()
    first = run_batch(pipeline, tmp_path / "in", tmp_path / "out", opts, recursive=True, show_progress=False)
    assert len(first.restored) == 2 and (tmp_path / "out" / "sub" / "b.png").is_file()
    stamp = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    second = run_batch(pipeline, tmp_path / "in", tmp_path / "out", opts, recursive=True, show_progress=False)
    assert len(second.already_done) == 2 and not second.restored
    assert (tmp_path / "out" / "a.png").stat().st_mtime_ns == stamp
    third = run_batch(
        pipeline, tmp_path / "in", tmp_path / "out", opts, recursive=True, overwrite=True, show_progress=False
    )
    assert len(third.restored) == 2


def test_shards_are_disjoint_and_cover(tmp_path) -> None:
    items = [Path(f"p{i:03d}.png") for i in range(17)]
    shares = [shard(items, k, 4) for k in range(4)]
    assert sorted(p for s in shares for p in s) == items
    assert sum(len(s) for s in shares) == len(items)
    with pytest.raises(ValueError):
        shard(items, 4, 4)


def test_shard_option_and_torchrun_environment(tmp_path, tiny_weights, monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    for i in range(5):
        Image.fromarray(_pixels(8, 8, i)).save(tmp_path / "in" / f"p{i}.png")
    args = ["run", "--quiet", "--input", str(tmp_path / "in"), "--weights", str(tiny_weights)]
    assert main([*args, "--output", str(tmp_path / "a"), "--shard", "1/2"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == ["p1.png", "p3.png"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    assert len(list((tmp_path / "a").glob("*.png"))) == 5


def test_same_stem_names_do_not_collide() -> None:
    names = output_names([Path("a.jpg"), Path("a.png"), Path("b.tif"), Path("x/a.jpg")])
    assert names == {
        Path("a.jpg"): Path("a.jpg.png"),
        Path("a.png"): Path("a.png.png"),
        Path("b.tif"): Path("b.png"),
        Path("x/a.jpg"): Path("x/a.png"),
    }


def test_hidden_and_non_images_are_ignored(tmp_path) -> None:
    _bad_input_folder(tmp_path / "in")
    _root, photos, ignored = collect_inputs(tmp_path / "in")
    assert Path(".DS_Store") in ignored and Path("readme.txt") in ignored
    assert Path("empty.png") in photos


@pytest.mark.slow
def test_sigkill_leaves_no_partial_outputs_and_rerun_completes(tmp_path, tiny_weights) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(24):
        Image.fromarray(_pixels(320, 320, i)).save(inputs / f"photo_{i:02d}.png")
    cmd = [
        sys.executable,
        "-m",
        "latent_restore.cli",
        "run",
        "--quiet",
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--weights",
        str(tiny_weights),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("*.png"))
    assert 2 <= len(done) < 24, "the run should have been killed part-way"
    for path in done:
        with Image.open(path) as im:
            im.load()  # complete, decodable files only
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    assert subprocess.run(cmd, check=False).returncode == 0
    assert len(list(out.glob("*.png"))) == 24
    assert not list(out.glob(".*.tmp"))
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in done)
