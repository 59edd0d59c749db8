"""Folder runs never destroy or silently skip a user's photos (each case once reproduced on main)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile

from latent_restore.batch import RECORD_KEY, STAGES_DIR, output_names, read_record, run_batch
from latent_restore.cli import main
from latent_restore.core.checkpoint import save_component
from latent_restore.core.components import Component
from latent_restore.core.imaging import PixelLimitError, read_photo
from latent_restore.pipeline import (
    IncompatibleWeightsError,
    NonFiniteOutputError,
    RestorationOptions,
    RestorationPipeline,
)
from stage1_vae import VAE, VAEConfig


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(*args: str | Path) -> int:
    return main(["run", "--quiet", *map(str, args)])


@pytest.fixture(scope="module")
def pipeline(tiny_weights):
    return RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False)


def _photos(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_pixels(24, 32, i)).save(folder / name)


# ------------------------------------------------------------------------------------ data loss


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_folder_equal_to_input_is_refused(tmp_path, tiny_weights, overwrite) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png", "b.jpg"])
    before = _tree_digest(photos)
    flags = ["--overwrite"] if overwrite else []
    same = photos / "sub" / ".."
    assert _run("--input", photos, "--output", same, "--weights", tiny_weights, *flags) == 2
    assert _tree_digest(photos) == before


def test_output_inside_input_tree_is_never_read_as_input(tmp_path, tiny_weights) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png", "b.jpg"])
    out = photos / "restored"
    for _ in range(2):
        code = _run("--input", photos, "--output", out, "--recursive", "--weights", tiny_weights)
        assert code == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "b.png"]


def test_an_input_file_is_never_an_output(tmp_path, tiny_weights) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png"])
    before = _tree_digest(photos)
    code = _run("--input", photos / "a.png", "--output", photos, "--overwrite", "--weights", tiny_weights)
    assert code == 2
    assert _tree_digest(photos) == before
    # A hard link to an input inside the output folder is an input too.
    out = tmp_path / "out"
    out.mkdir()
    os.link(photos / "a.png", out / "a.png")
    code = _run("--input", photos, "--output", out, "--overwrite", "--weights", tiny_weights)
    assert code == 2
    assert _tree_digest(photos) == before


# ------------------------------------------------------------------------------------ limits


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` (its pixel data is cut short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_limit_refuses_from_the_header_before_decoding(tmp_path, monkeypatch) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(12000, 12000))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(PixelLimitError, match="too many pixels"):
        read_photo(path, max_pixels=100_000_000)
    assert not decoded
    # Under Pillow's own bomb limit (which only warns): still a refusal, not a warning.
    path.write_bytes(_png_header_only(10000, 10000))
    with pytest.raises(PixelLimitError):
        read_photo(path)
    # A limit above Pillow's lets the header through; the photo is then checked against ours.
    path.write_bytes(_png_header_only(16000, 16000))
    with pytest.raises(PixelLimitError, match=r"200\.0 MP"):
        read_photo(path, max_pixels=200_000_000)


def test_run_refuses_a_photo_above_max_pixels_and_goes_on(tmp_path, tiny_weights) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["small.png"])
    (photos / "bomb.png").write_bytes(_png_header_only(12000, 12000))
    out = tmp_path / "out"
    code = _run("--input", photos, "--output", out, "--weights", tiny_weights, "--max-pixels", "1e6")
    assert code == 1
    assert [p.name for p in out.glob("*.png")] == ["small.png"]


def test_default_pixel_limit_follows_the_machine(pipeline) -> None:
    from latent_restore.core.memory import available_memory
    from latent_restore.pipeline import BYTES_PER_PIXEL

    expected = available_memory(torch.device("cpu")) * 0.5 / BYTES_PER_PIXEL
    assert abs(pipeline.max_pixels - expected) / expected < 0.2


# ------------------------------------------------------------------------------------ wrong results


def test_components_that_do_not_fit_are_refused(tmp_path, tiny_weights, pipeline) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_weights, mixed)
    config = pipeline.components.get(Component.VAE_A).config
    other = VAEConfig(**{**vars(config), "num_downsamples": config.num_downsamples + 1})
    shutil.rmtree(mixed / Component.VAE_A.value)
    save_component(VAE(other), mixed / Component.VAE_A.value)
    broken = RestorationPipeline.from_pretrained(mixed, device="cpu", faces=False)
    with pytest.raises(IncompatibleWeightsError, match="vae_a and vae_b_quality"):
        broken.check_ready(RestorationOptions())
    photos = tmp_path / "album"
    _photos(photos, ["a.png"])
    assert _run("--input", photos, "--output", tmp_path / "out", "--weights", mixed) == 2
    assert not (tmp_path / "out").exists()


def test_non_finite_output_fails_the_photo_with_a_reason(tiny_weights, monkeypatch) -> None:
    pipe = RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False)
    decoder = pipe.components.get(Component.VAE_B_QUALITY)
    decode = decoder.decode
    monkeypatch.setattr(decoder, "decode", lambda z: decode(z) * float("nan"))
    with pytest.raises(NonFiniteOutputError, match="non-finite"):
        pipe(_pixels(20, 20))


def test_output_names_are_injective() -> None:
    photos = [Path(p) for p in ["a.jpg", "a.jpg.png", "a.png", "A.PNG", "b.tif", "sub/c.jpg", "sub/C.png"]]
    names = output_names(photos)
    keys = [n.as_posix().casefold() for n in names.values()]
    assert len(set(keys)) == len(photos)
    assert names[Path("b.tif")] == Path("b.png")
    assert all(n.suffix == ".png" for n in names.values())


def test_colliding_names_and_stage_folders_are_all_restored(tmp_path, tiny_weights) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.jpg", "a.jpg.png", "stages/global/x.png", "x.png"])
    out = tmp_path / "out"
    code = _run("--input", photos, "--output", out, "--recursive", "--save-stages", "--weights", tiny_weights)
    assert code == 0
    restored = {p.relative_to(out).as_posix() for p in out.rglob("*.png") if STAGES_DIR not in p.parts}
    assert len(restored) == 4 and "stages/global/x.png" in restored
    records = [read_record(out / name) for name in restored]
    assert all(r is not None for r in records)
    # The stage image of x.png lives apart from the restored photo of stages/global/x.png.
    assert (out / STAGES_DIR / "global" / "x.png").is_file()
    assert read_record(out / "stages" / "global" / "x.png") is not None


def test_rerun_with_other_options_redoes_and_never_touches_foreign_files(tmp_path, tiny_weights) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png", "b.png"])
    out = tmp_path / "out"
    assert _run("--input", photos, "--output", out, "--weights", tiny_weights) == 0
    first = read_record(out / "a.png")
    assert first["options"]["with_scratch"] is False
    stamp = (out / "a.png").stat().st_mtime_ns
    assert _run("--input", photos, "--output", out, "--weights", tiny_weights) == 0
    assert (out / "a.png").stat().st_mtime_ns == stamp  # same options: already done
    assert _run("--input", photos, "--output", out, "--with-scratch", "--weights", tiny_weights) == 0
    assert read_record(out / "a.png")["options"]["with_scratch"] is True
    # A file of the same name that this package did not write is left alone without --overwrite.
    Image.fromarray(_pixels(5, 5, 9)).save(out / "b.png")
    foreign = (out / "b.png").read_bytes()
    assert _run("--input", photos, "--output", out, "--with-scratch", "--weights", tiny_weights) == 1
    assert (out / "b.png").read_bytes() == foreign


def test_record_names_the_weights(pipeline, tiny_weights) -> None:
    record = pipeline.record(RestorationOptions())
    assert set(record["weights"]) == {"vae_a", "mapping_quality", "vae_b_quality"}
    expected = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        expected.update(name.encode())
        expected.update((tiny_weights / "vae_a" / name).read_bytes())
    assert record["weights"]["vae_a"] == expected.hexdigest()
    assert json.loads(json.dumps(record)) == record


def _cmyk_profile() -> bytes:
    """A minimal ICC v2 output profile: CMYK -> Lab by a 2-point lut8 (naive subtractive mixing)."""
    from skimage.color import rgb2lab

    grid = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = np.array([[[(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)]]], float)
                    lab = rgb2lab(rgb, illuminant="D50")[0, 0]
                    grid += [round(lab[0] * 255 / 100), round(lab[1] + 128), round(lab[2] + 128)]
    ramp = bytes(range(256))
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536)
    lut = b"mft1" + b"\0" * 4 + bytes([4, 3, 2, 0]) + identity + ramp * 4 + bytes(grid) + ramp * 3
    desc_text = b"test CMYK\0"
    desc = (
        b"desc"
        + b"\0" * 4
        + struct.pack(">I", len(desc_text))
        + desc_text
        + b"\0" * 8
        + b"\0" * 3
        + b"\0" * 67
    )
    wtpt = b"XYZ " + b"\0" * 4 + struct.pack(">3i", 63190, 65536, 54061)
    cprt = b"text" + b"\0" * 4 + b"none\0"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", lut)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"prtrCMYKLab "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + struct.pack(">3i", 63190, 65536, 54061)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + table + body


def test_cmyk_jpeg_is_converted_through_its_profile(tmp_path, pipeline) -> None:
    profile = _cmyk_profile()
    assert ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.xcolor_space.strip() == "CMYK"
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8, 0] = 255  # cyan left half, yellow right half
    cmyk[:, 8:, 2] = 255
    path = tmp_path / "print.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, icc_profile=profile, quality=95)
    photo = read_photo(path)
    assert photo.icc_profile is not None
    assert ImageCms.ImageCmsProfile(io.BytesIO(photo.icc_profile)).profile.xcolor_space.strip() == "RGB"
    left, right = photo.rgb[:, :8].mean((0, 1)), photo.rgb[:, 8:].mean((0, 1))
    assert left[0] < 0.4 and left[2] > 0.6  # cyan: little red, much blue
    assert right[2] < 0.4 and right[0] > 0.6  # yellow: little blue, much red
    out = tmp_path / "out"
    summary = run_batch(pipeline, path, out, RestorationOptions(faces=False), show_progress=False)
    assert summary.exit_code == 0
    with Image.open(out / "print.png") as image:
        assert image.mode == "RGB"
        written = image.info["icc_profile"]
    assert ImageCms.ImageCmsProfile(io.BytesIO(written)).profile.xcolor_space.strip() == "RGB"


# ------------------------------------------------------------------------------------ files and processes


def test_outputs_honour_the_umask(tmp_path, pipeline) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png"])
    old = os.umask(0o022)
    try:
        run_batch(pipeline, photos, tmp_path / "out", RestorationOptions(faces=False), show_progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "a.png").stat().st_mode) == 0o644


def test_fifos_dangling_links_and_long_names(tmp_path, pipeline) -> None:
    photos = tmp_path / "album"
    long_name = "p" * 240 + ".png"
    _photos(photos, [long_name])
    os.mkfifo(photos / "pipe.png")
    (photos / "gone.jpg").symlink_to(photos / "missing.jpg")
    summary = run_batch(
        pipeline, photos, tmp_path / "out", RestorationOptions(faces=False), show_progress=False
    )
    reasons = {p.name: r for p, r in summary.skipped}
    assert "FIFO" in reasons["pipe.png"]
    assert "dangling" in reasons["gone.jpg"]
    assert [p.name for p in summary.restored] == [long_name]
    assert (tmp_path / "out" / long_name).is_file()
    assert summary.exit_code == 1


def test_bad_config_json_is_reported_once_before_any_photo(tmp_path, tiny_weights, caplog) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    (weights / "mapping_quality" / "config.json").write_text("{ not json")
    photos = tmp_path / "album"
    _photos(photos, ["a.png", "b.png", "c.png"])
    caplog.set_level("ERROR")
    assert _run("--input", photos, "--output", tmp_path / "out", "--weights", weights) == 2
    assert len([r for r in caplog.records if "mapping_quality" in r.getMessage()]) == 1
    assert not (tmp_path / "out").exists()


def test_ctrl_c_stops_after_the_current_photo_with_a_summary(tmp_path, tiny_weights) -> None:
    photos, out = tmp_path / "album", tmp_path / "out"
    photos.mkdir()
    for i in range(30):
        Image.fromarray(_pixels(256, 256, i)).save(photos / f"p{i:02d}.png")
    before = _tree_digest(photos)
    cmd = [sys.executable, "-m", "latent_restore.cli", "run", "--quiet", "--input", str(photos)]
    cmd += ["--output", str(out), "--weights", str(tiny_weights)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 1:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err and "restored" in err
    done = list(out.glob("*.png"))
    assert 1 <= len(done) < 30
    for path in done:
        with Image.open(path) as image:
            image.load()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert _tree_digest(photos) == before


# ------------------------------------------------------------------------------------ rough edges


def test_missing_cuda_is_one_line(tmp_path, tiny_weights, caplog) -> None:
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    photos = tmp_path / "album"
    _photos(photos, ["a.png"])
    caplog.set_level("ERROR")
    code = main(["run", "--input", str(photos), "--output", str(tmp_path / "o"), "--device", "cuda:7"])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1 and errors[0].exc_info is None
    assert "CUDA" in errors[0].getMessage() and "\n" not in errors[0].getMessage()
    assert not (tmp_path / "o").exists()


def test_version_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("latent-restore ")


def test_hr_without_scratch_says_it_has_no_effect(tmp_path, tiny_weights, caplog) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png"])
    caplog.set_level("WARNING")
    assert _run("--input", photos, "--output", tmp_path / "out", "--hr", "--weights", tiny_weights) == 0
    assert any("no effect without --with-scratch" in r.getMessage() for r in caplog.records)


def test_face_size_is_its_own_option() -> None:
    assert RestorationOptions(hr=True, with_scratch=True).resolved_face_size() == 256
    assert RestorationOptions(face_size=512).resolved_face_size() == 512
    assert RestorationOptions(hr=True, with_scratch=True, preset="official").resolved_face_size() == 512
    with pytest.raises(ValueError):
        RestorationOptions(face_size=300)


def test_png_record_survives_round_trip(tmp_path) -> None:
    from latent_restore.core.imaging import encode_png

    path = tmp_path / "x.png"
    path.write_bytes(encode_png(np.zeros((4, 4, 3), np.float32), text={RECORD_KEY: json.dumps({"a": 1})}))
    assert read_record(path) == {"a": 1}
    Image.new("RGB", (4, 4)).save(path)
    assert read_record(path) is None


def test_io_threads_change_nothing_but_speed(tmp_path, pipeline) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png", "b.png", "c.png", "d.png"])
    (photos / "bad.png").write_bytes(b"not a photo")
    (photos / "c2.jpg").write_bytes(b"")
    options = RestorationOptions(faces=False)
    runs = {}
    for threads in (False, True):
        out = tmp_path / f"out_{threads}"
        summary = run_batch(pipeline, photos, out, options, show_progress=False, io_threads=threads)
        runs[threads] = (summary.restored, summary.failed, _tree_digest(out))
    assert runs[False] == runs[True]
    assert [p.name for p in runs[True][0]] == ["a.png", "b.png", "c.png", "d.png"]
    assert [p.name for p, _ in runs[True][1]] == ["bad.png", "c2.jpg"]


def test_stray_rank_without_world_size_restores_everything(
    tmp_path, tiny_weights, monkeypatch, caplog
) -> None:
    photos = tmp_path / "album"
    _photos(photos, ["a.png", "b.png", "c.png"])
    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    caplog.set_level("WARNING")
    assert _run("--input", photos, "--output", tmp_path / "out", "--weights", tiny_weights) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    assert any("RANK" in r.getMessage() for r in caplog.records)


def test_torch_is_a_range_for_users_and_a_pin_for_ci() -> None:
    import configparser

    repo = Path(__file__).resolve().parents[1]
    setup = configparser.ConfigParser()
    setup.read(repo / "setup.cfg")
    requires = [line.strip() for line in setup["options"]["install_requires"].splitlines() if line.strip()]
    torch_lines = [r for r in requires if r.startswith(("torch>", "torch=", "torchvision"))]
    assert torch_lines and not any("==" in r for r in torch_lines)
    pins = (repo / "constraints.txt").read_text()
    assert "torch==" in pins and "torchvision==" in pins
    assert "-c constraints.txt" in (repo / ".ci" / "run").read_text()


def test_a_fixture_folder_without_index_fails_loudly(tmp_path, monkeypatch) -> None:
    from helpers import fixture_entries

    monkeypatch.setenv("LATENT_RESTORE_FIXTURES", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"index\.json"):
        fixture_entries(("global_",))
