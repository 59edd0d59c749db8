"""The hostile-input corpus of issue 12, run through the real command line, one line per case.

    python benchmarks/hostile_inputs.py            # every case, two at a time
    python benchmarks/hostile_inputs.py -j 1 --only 'convert|serve' --keep

Every case builds its own files in a temporary folder (nothing is downloaded; a real photo from
``../shared/data`` is used when present, and ``../shared/spec``'s weight rule for the convert cases
that need a genuine release checkpoint), then runs ``python -m latent_restore.cli run|convert|serve``
as a subprocess under a timeout. A case declares what it expects: a refusal (exit code and a message
that one output line must match, a peak memory under :data:`REFUSED_PEAK_BYTES`) or a restoration
(exit code, files of the right size). Each line gives the verdict, the command (``$T`` = the case's
folder), the outcome, whether every input file is byte-identical afterwards (SHA-256 of each file,
and no file added or removed in an input folder) and the child's peak resident memory (``os.wait4``
in a lean spawner process, see :data:`SPAWNER`), so one line says whether that input was handled.
A last SUMMARY line counts them; the exit code is 1 when any case missed its expectation
(``--list`` names the cases). Children run with ``OMP_NUM_THREADS=1``, an empty
``LATENT_RESTORE_HOME`` (the built-in weights are used unless a case passes ``--weights``) and
without torchrun variables.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import queue
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFUSED_PEAK_BYTES = 2 << 30
"""A refused input must never cost more than this (issue 12: refusals happen before decoding)."""
RUN_TIMEOUT_S = 180.0
SERVE_START_S = 120.0
HUGE_SIDE = 12000
"""The 17 KB PNG of issue 12, item 3: a 1-bit 12000x12000 image, 144 megapixels."""
BOMB_SIDE = 50000
"""2.5 gigapixels, far above Pillow's own hard limit (twice ``Image.MAX_IMAGE_PIXELS``)."""
STRAY_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

Interaction = Callable[["Child", Path], tuple[str, list[str]]]
"""Talks to a running child (a server, a batch to interrupt): an outcome text and the problems seen."""


@dataclass
class Case:
    """One hostile input and what a correct program does with it.

    ``code`` is the expected exit code; ``message`` a regular expression that one line of the
    child's output (or of the interaction's outcome) must match; ``refused`` puts the case under
    the memory bound; ``check`` looks at what was written (returns a problem or None); ``inputs``
    are hashed before and after, ``exclude`` (an output folder nested in an input) left out.
    """

    name: str
    argv: list[str]
    inputs: list[Path]
    code: int
    message: str | None = None
    refused: bool = True
    check: Callable[[], str | None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    interact: Interaction | None = None
    exclude: list[Path] = field(default_factory=list)
    timeout: float = RUN_TIMEOUT_S
    skip: str | None = None
    root: Path = Path()

    @property
    def log(self) -> Path:
        """The child's stdout and stderr, kept beside (not inside) the case's folder."""
        return self.root.parent / f"{self.name}.log"


@dataclass
class Result:
    """What happened to one case."""

    case: Case
    code: int | None
    outcome: str
    identical: bool
    peak_bytes: int
    seconds: float
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------------------------ files


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish RGB photo stand-in (noise upsampled), ``h x w x 3`` uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def _photo(path: Path, h: int = 24, w: int = 32, seed: int = 0, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(h, w, seed)).save(path, **save)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: Iterable[bytes]) -> bytes:
    """A PNG from raw scanlines (each without its filter byte), compressed as it streams."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(b"\0" + row) for row in rows) + deflate.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def blank_bilevel_png(side: int) -> bytes:
    """A fully decodable 1-bit black ``side x side`` PNG: 17.5 KB at 12000, 300 KB at 50000."""
    row = bytes((side + 7) // 8)
    return _png(side, side, 1, 0, (row for _ in range(side)))


def _png_16bit_rgb(h: int, w: int) -> bytes:
    pixels = (_noise(h, w).astype(np.uint16) * 257 + np.arange(w, dtype=np.uint16)[None, :, None]).astype(
        ">u2"
    )
    return _png(w, h, 16, 2, (pixels[y].tobytes() for y in range(h)))


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (OSError, ValueError, SyntaxError):
        return None


def _expect_outputs(
    out: Path, sizes: dict[str, tuple[int, int]], exact: bool = True
) -> Callable[[], str | None]:
    """A check: each named output decodes at its input's displayed size (and, if exact, nothing else)."""

    def check() -> str | None:
        for name, size in sizes.items():
            got = _image_size(out / name)
            if got is None:
                return f"{name} missing or unreadable in the output"
            if got != size:
                return f"{name} is {got[0]}x{got[1]}, its input {size[0]}x{size[1]}"
        if exact:
            written = {
                p.relative_to(out).as_posix() for p in out.rglob("*.png") if not _hidden(p.relative_to(out))
            }
            extra = sorted(written - set(sizes))
            if extra:
                return f"unexpected outputs: {', '.join(extra[:3])}"
        return None

    return check


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _absent(path: Path, what: str = "output folder") -> Callable[[], str | None]:
    def check() -> str | None:
        return f"the {what} {path.name} was created" if os.path.lexists(path) else None

    return check


def _no_photo_in(out: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        written = [p.name for p in out.rglob("*.png")] if out.is_dir() else []
        return f"wrote {written[0]}" if written else None

    return check


def _all(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    def check() -> str | None:
        return next((p for p in (c() for c in checks) if p), None)

    return check


def builtin_weights() -> Path:
    from latent_restore.weights import default_weights_dir

    found = default_weights_dir()
    if found is None:
        raise SystemExit("this installation has no built-in weights; the run cases need them")
    return found


def _weights_copy(root: Path) -> Path:
    target = root / "weights"
    shutil.copytree(builtin_weights(), target)
    return target


def _default_max_pixels() -> int:
    from latent_restore.pipeline import default_max_pixels

    return default_max_pixels()


def _real_photo() -> Path | None:
    """A small real photo from ../shared/data, if there is one."""
    clean = SHARED / "data" / "clean"
    if not clean.is_dir():
        return None
    for path in sorted(clean.rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg") and path.stat().st_size < 300_000:
            return path
    return None


# ------------------------------------------------------------------------------------ cases

Builder = Callable[[Path], Case]
BUILDERS: list[tuple[str, Builder]] = []


def case(name: str) -> Callable[[Builder], Builder]:
    """Register a builder; it gets an empty folder of its own and returns the case."""

    def register(builder: Builder) -> Builder:
        BUILDERS.append((name, builder))
        return builder

    return register


def _run(inputs: Path, out: Path, *flags: str | Path) -> list[str]:
    return ["run", "--quiet", "--input", str(inputs), "--output", str(out), *map(str, flags)]


def _album(root: Path, names: Iterable[str] = ("a.png", "b.jpg")) -> Path:
    album = root / "album"
    for i, name in enumerate(names):
        _photo(album / name, seed=i)
    return album


SIZE = (32, 24)
"""Width and height of the stand-in photos."""


@case("same-folder")
def _same_folder(root: Path) -> Case:
    album = _album(root)
    return Case("", _run(album, album), [album], 2, r"is the input folder")


@case("same-folder-overwrite")
def _same_folder_overwrite(root: Path) -> Case:
    album = _album(root)
    return Case("", _run(album, album, "--overwrite"), [album], 2, r"is the input folder")


@case("same-folder-via-symlink-overwrite")
def _same_folder_alias(root: Path) -> Case:
    album = _album(root)
    alias = root / "alias"
    alias.symlink_to(album)
    return Case("", _run(album, alias, "--overwrite"), [album], 2, r"is the input folder|must differ")


@case("output-nested-in-input")
def _nested(root: Path) -> Case:
    album = _album(root)
    out = album / "restored"
    check = _expect_outputs(out, {"a.png": SIZE, "b.png": SIZE})
    return Case("", _run(album, out, "--recursive"), [album], 0, refused=False, check=check, exclude=[out])


@case("output-nested-in-input-rerun")
def _nested_rerun(root: Path) -> Case:
    album = _album(root)
    out = album / "restored"
    for name in ("a.png", "b.png"):  # as a first run leaves it: restored photos inside the input tree
        _photo(out / name, seed=9)
    check = _expect_outputs(out, {"a.png": SIZE, "b.png": SIZE})
    argv = _run(album, out, "--recursive", "--overwrite")
    return Case("", argv, [album], 0, refused=False, check=check, exclude=[out])


@case("input-file-is-its-own-output")
def _self_output(root: Path) -> Case:
    album = _album(root, ["a.png"])
    return Case(
        "", _run(album / "a.png", album, "--overwrite"), [album], 2, r"overwrite input file|input folder"
    )


@case("output-holds-hard-link-to-input")
def _hard_link(root: Path) -> Case:
    album = _album(root, ["a.png"])
    out = root / "out"
    out.mkdir()
    os.link(album / "a.png", out / "a.png")
    return Case("", _run(album, out, "--overwrite"), [album, out], 2, r"overwrite input file")


def _huge_case(root: Path, flags: list[str], skip: str | None) -> Case:
    path = root / "huge.png"
    path.write_bytes(blank_bilevel_png(HUGE_SIDE))
    out = root / "out"
    return Case(
        "",
        _run(path, out, *flags),
        [path],
        1,
        r"huge\.png.*too many pixels",
        check=_no_photo_in(out),
        skip=skip,
    )


@case("header-12000x12000-17KB-default-limit")
def _huge_default(root: Path) -> Case:
    limit = _default_max_pixels()
    skip = None
    if limit >= HUGE_SIDE * HUGE_SIDE:
        skip = f"this machine's default limit ({limit / 1e6:.0f} MP) admits 144 MP; see the --max-pixels case"
    return _huge_case(root, [], skip)


@case("header-12000x12000-17KB-max-pixels-1e8")
def _huge_explicit(root: Path) -> Case:
    return _huge_case(root, ["--max-pixels", "1e8"], None)


@case("bomb-2.5-gigapixel-png")
def _bomb(root: Path) -> Case:
    path = root / "bomb.png"
    path.write_bytes(blank_bilevel_png(BOMB_SIDE))
    out = root / "out"
    return Case("", _run(path, out), [path], 1, r"bomb\.png.*too many pixels", check=_no_photo_in(out))


def _bad_file(name: str, make: Callable[[Path], None], reason: str) -> None:
    """One unreadable file, alone, as the input: refused for that photo with ``reason``, exit 1."""

    def build(root: Path) -> Case:
        path = root / name
        make(path)
        out = root / "out"
        return Case(
            "", _run(path, out), [path], 1, rf"{re.escape(name)}.*({reason})", check=_no_photo_in(out)
        )

    BUILDERS.append((f"bad-file-{name}", build))


def _jpeg_bytes(h: int = 48, w: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_file_bytes(h: int = 48, w: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(buffer, format="PNG")
    return buffer.getvalue()


def _corrupt_idat(path: Path) -> None:
    data = bytearray(_png_file_bytes())
    start = data.find(b"IDAT") + 4
    data[start + 20 : start + 220] = bytes(range(200))
    path.write_bytes(bytes(data))


_bad_file("empty.jpg", lambda p: p.write_bytes(b""), "empty")
_bad_file("empty.png", lambda p: p.write_bytes(b""), "empty")
_bad_file("truncated.jpg", lambda p: p.write_bytes(_jpeg_bytes()[:1500]), "decode|truncated")
_bad_file("truncated.png", lambda p: p.write_bytes(_png_file_bytes()[:300]), "decode|truncated")
_bad_file("corrupt-idat.png", _corrupt_idat, "decode|corrupt|invalid")
_bad_file(
    "garbage-after-soi.jpg",
    lambda p: p.write_bytes(b"\xff\xd8\xff" + np.random.default_rng(0).bytes(4000)),
    "decode|not an image",
)
_bad_file("notes.jpg", lambda p: p.write_text("not a photo at all\n"), "not an image")
_bad_file("page.png", lambda p: p.write_text("<html><body>a web page</body></html>\n"), "not an image")


def _mode_case(name: str, make: Callable[[Path], tuple[int, int]], mode: str | None = None) -> None:
    """A readable file in an odd mode, alone, as the input: restored at its displayed size."""

    def build(root: Path) -> Case:
        path = root / "album" / name
        path.parent.mkdir(parents=True)
        size = make(path)
        out = root / "out"
        expected = {Path(name).with_suffix(".png").name: size}
        checks = [_expect_outputs(out, expected)]
        if mode is not None:
            checks.append(_output_mode(out / Path(name).with_suffix(".png").name, mode))
        return Case("", _run(path, out), [path.parent], 0, refused=False, check=_all(*checks))

    BUILDERS.append((f"mode-{name}", build))


def _output_mode(path: Path, mode: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            with Image.open(path) as image:
                got = image.mode
        except OSError:
            return None  # reported by the size check
        return None if got == mode else f"{path.name} is {got}, expected {mode}"

    return check


def _save(image: Image.Image, path: Path, **options: object) -> tuple[int, int]:
    image.save(path, **options)
    return image.size


def _rotated(path: Path) -> tuple[int, int]:
    image = Image.fromarray(_noise(16, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 40x16 stored, 16x40 shown
    image.save(path, exif=exif.tobytes())
    return (16, 40)


def _write(path: Path, data: bytes, size: tuple[int, int]) -> tuple[int, int]:
    path.write_bytes(data)
    return size


_mode_case("cmyk.jpg", lambda p: _save(Image.fromarray(_noise(20, 28)).convert("CMYK"), p), "RGB")
_mode_case("rgb16.png", lambda p: _write(p, _png_16bit_rgb(24, 30), (30, 24)))
_mode_case(
    "gray16.png",
    lambda p: _save(Image.fromarray((np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)), p),
    "L",
)
_mode_case(
    "palette.png",
    lambda p: _save(Image.fromarray(_noise(20, 20)).convert("P", palette=Image.Palette.ADAPTIVE), p),
)
_mode_case("la.png", lambda p: _save(Image.fromarray(_noise(20, 26)).convert("LA"), p), "LA")
_mode_case("bilevel.png", lambda p: _save(Image.fromarray(_noise(24, 24)).convert("1"), p))
_mode_case("rgba.png", lambda p: _save(Image.fromarray(_noise(20, 20)).convert("RGBA"), p), "RGBA")
_mode_case("gray.jpg", lambda p: _save(Image.fromarray(_noise(24, 32)).convert("L"), p, quality=90), "L")
_mode_case("tiny-1x1.png", lambda p: _save(Image.fromarray(_noise(1, 1)), p))
_mode_case("exif-rotated.jpg", _rotated)


@case("real-photo-from-shared-data")
def _real(root: Path) -> Case:
    source = _real_photo()
    if source is None:
        return Case("", ["run"], [], 0, skip="../shared/data is absent")
    album = root / "album"
    album.mkdir()
    path = album / source.name
    shutil.copyfile(source, path)
    with Image.open(path) as image:
        size = image.size
    out = root / "out"
    check = _expect_outputs(out, {Path(source.name).with_suffix(".png").name: size})
    return Case("", _run(album, out), [album], 0, refused=False, check=check)


BAD_FOLDER_RESTORED = {
    "good_one": (50, 40),
    "good_two": (20, 30),
    "deep16": (32, 24),
    "rgba": (20, 20),
    "palette": (20, 20),
    "cmyk": (28, 20),
    "tiny": (1, 1),
    "rotated": (16, 40),
    "grand-mère_été": (12, 12),
}


def _bad_input_folder(folder: Path) -> None:
    """The folder of tests/test_batch.py::_bad_input_folder, file for file."""
    folder.mkdir()
    _photo(folder / "good_one.png", 40, 50, 1)
    _photo(folder / "good_two.jpg", 30, 20, 2, quality=90)
    (folder / "empty.png").write_bytes(b"")
    jpeg = _jpeg_bytes(64, 64)
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.jpg").write_text("not a photo at all")
    Image.fromarray((np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(_noise(20, 20, 4)).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(_noise(20, 20, 5)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        folder / "palette.png"
    )
    Image.fromarray(_noise(20, 28, 6)).convert("CMYK").save(folder / "cmyk.jpg")
    _photo(folder / "tiny.png", 1, 1, 7)
    _rotated(folder / "rotated.jpg")
    (folder / ".DS_Store").write_bytes(b"\x00\x01binary")
    _photo(folder / "grand-mère_été.png", 12, 12, 9)
    (folder / "readme.txt").write_text("ignored")


@case("bad-input-folder-of-test_batch")
def _bad_folder(root: Path) -> Case:
    album = root / "in"
    _bad_input_folder(album)
    out = root / "out"
    check = _expect_outputs(out, {f"{stem}.png": size for stem, size in BAD_FOLDER_RESTORED.items()})
    message = r"restored 9, already done 0, failed 3, skipped 0"
    return Case("", _run(album, out), [album], 1, message, refused=False, check=check)


@case("colliding-names")
def _colliding(root: Path) -> Case:
    album = _album(root, ["a.jpg", "a.png", "a.jpg.png", "A.PNG"])
    out = root / "out"

    def check() -> str | None:
        written = sorted(p.name for p in out.glob("*.png"))
        if len(written) != 4:
            return f"4 inputs, {len(written)} outputs: {written}"
        from latent_restore.batch import read_record

        unrecorded = [name for name in written if read_record(out / name) is None]
        return f"outputs without a record: {unrecorded}" if unrecorded else None

    return Case("", _run(album, out), [album], 0, refused=False, check=check)


@case("recursive-save-stages-with-input-stages-folder")
def _stages(root: Path) -> Case:
    album = _album(root, ["x.png", "stages/global/x.png", "stages/x.png"])
    out = root / "out"
    restored = {"x.png": SIZE, "stages/global/x.png": SIZE, "stages/x.png": SIZE}

    def check() -> str | None:
        from latent_restore.batch import read_record

        problem = _expect_outputs(out, restored)()
        if problem:
            return problem
        lost = [name for name in restored if read_record(out / name) is None]
        return f"restored photos replaced by stage images: {lost}" if lost else None

    argv = _run(album, out, "--recursive", "--save-stages")
    return Case("", argv, [album], 0, refused=False, check=check)


@case("fifo-and-dangling-symlink-named-png")
def _fifo(root: Path) -> Case:
    album = _album(root, ["good.png"])
    os.mkfifo(album / "pipe.png")
    (album / "gone.png").symlink_to(album / "missing.png")
    out = root / "out"
    check = _expect_outputs(out, {"good.png": SIZE})
    message = r"skipped: .*pipe\.png: .*FIFO"
    built = Case("", _run(album, out), [album], 1, message, refused=False, check=check, timeout=120)
    built.check = _all(check, _stderr_has(built, r"skipped: .*gone\.png: .*dangling"))
    return built


def _stderr_has(case: Case, pattern: str) -> Callable[[], str | None]:
    """A check on the child's output, read back from the case's log after it ran."""

    def check() -> str | None:
        text = case.log.read_text(errors="replace")
        return None if re.search(pattern, text) else f"no line matches {pattern!r}"

    return check


@case("file-name-245-bytes")
def _long_name(root: Path) -> Case:
    name = "p" * 241 + ".jpg"
    album = _album(root, [name])
    out = root / "out"
    check = _expect_outputs(out, {"p" * 241 + ".png": SIZE})
    return Case("", _run(album, out), [album], 0, refused=False, check=check)


@case("weights-bad-config-json")
def _bad_config(root: Path) -> Case:
    weights = _weights_copy(root)
    (weights / "mapping_quality" / "config.json").write_text("{ not json")
    album = _album(root, ["a.png", "b.png", "c.png"])
    out = root / "out"
    built = Case("", _run(album, out, "--weights", weights), [album, weights], 2, r"mapping_quality")
    built.check = _all(_absent(out), _reported_once(built, "mapping_quality"))
    return built


def _reported_once(case: Case, word: str) -> Callable[[], str | None]:
    def check() -> str | None:
        lines = case.log.read_text(errors="replace").splitlines()
        count = sum(1 for line in lines if line.startswith("ERROR") and word in line)
        return None if count == 1 else f"{word} reported in {count} error lines, expected once"

    return check


@case("weights-mixed-downsampling")
def _mixed(root: Path) -> Case:
    from latent_restore.core.checkpoint import load_component, save_component
    from stage1_vae import VAE, VAEConfig

    weights = _weights_copy(root)
    config = load_component(weights / "vae_a").config
    shutil.rmtree(weights / "vae_a")
    other = VAEConfig(**{**vars(config), "num_downsamples": config.num_downsamples + 1})
    save_component(VAE(other), weights / "vae_a")
    album = _album(root, ["a.png"])
    out = root / "out"
    message = r"vae_a.*vae_b_quality|vae_b_quality.*vae_a"
    return Case("", _run(album, out, "--weights", weights), [album, weights], 2, message, check=_absent(out))


@case("weights-nan-tensors")
def _nan(root: Path) -> Case:
    from safetensors.torch import load_file, save_file

    weights = _weights_copy(root)
    path = weights / "vae_b_quality" / "model.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            tensors[key] = tensor.fill_(float("nan"))
    save_file(tensors, str(path), metadata={"format": "pt"})
    album = _album(root, ["a.png"])
    out = root / "out"
    argv = _run(album, out, "--weights", weights)
    return Case("", argv, [album, weights], 2, r"non-finite|NaN", check=_absent(out))


@case("weights-config-asks-for-huge-network")
def _tampered(root: Path) -> Case:
    weights = _weights_copy(root)
    path = weights / "vae_a" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["base_channels"] = 16384
    path.write_text(json.dumps(meta, indent=2))
    album = _album(root, ["a.png"])
    out = root / "out"
    argv = _run(album, out, "--weights", weights)
    return Case("", argv, [album, weights], 2, r"does not fit|before allocating", check=_absent(out))


@case("stray-RANK-without-WORLD_SIZE")
def _rank(root: Path) -> Case:
    album = _album(root, ["a.png", "b.png"])
    out = root / "out"
    check = _expect_outputs(out, {"a.png": SIZE, "b.png": SIZE})
    message = r"RANK without WORLD_SIZE|WORLD_SIZE"
    return Case("", _run(album, out), [album], 0, message, refused=False, check=check, env={"RANK": "3"})


@case("device-cuda-without-cuda")
def _cuda(root: Path) -> Case:
    import torch

    album = _album(root, ["a.png"])
    out = root / "out"
    argv = _run(album, out, "--device", "cuda")
    if torch.cuda.is_available():
        return Case("", argv, [album], 0, skip="this machine has CUDA")
    built = Case("", argv, [album], 2, r"CUDA")
    built.check = _all(_absent(out), _one_error_line(built))
    return built


def _one_error_line(case: Case) -> Callable[[], str | None]:
    def check() -> str | None:
        text = case.log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")]
        if len(errors) != 1:
            return f"{len(errors)} error lines"
        after = lines[lines.index(errors[0]) + 1 :]
        return f"{len(after)} lines after the error" if after else None

    return check


# ------------------------------------------------------------------------------------ convert

ZIP_VAE = "checkpoints/restoration/VAE_A_quality/latest_net_G.pth"
TREE_VAE = "Global/" + ZIP_VAE


def _convert(out: Path, *sources: Path, overwrite: bool = False) -> list[str]:
    argv = ["convert", "--quiet", "--official", *map(str, sources), "--out", str(out)]
    return [*argv, "--overwrite"] if overwrite else argv


def _refused_convert(name: str, make: Callable[[Path], Path], message: str) -> None:
    """``convert --official SOURCE`` refused with ``message``, writing nothing.

    The whole case folder is the input: a staging folder left behind, or a ``../`` member written
    out of it (``--out`` is a sub-folder), shows as a changed input.
    """

    def build(root: Path) -> Case:
        source = make(root)
        out = root / "w"
        return Case("", _convert(out, source), [root], 2, message, check=_absent(out, "--out folder"))

    BUILDERS.append((f"convert-{name}", build))


def _text(root: Path) -> Path:
    path = root / "notes.txt"
    path.write_text("not a checkpoint\n")
    return path


def _symlink_to_text(root: Path) -> Path:
    link = root / "global_checkpoints.zip"
    link.symlink_to(_text(root))
    return link


def _tree_with_linked_text(root: Path) -> Path:
    tree = root / "official"
    path = tree / TREE_VAE
    path.parent.mkdir(parents=True)
    path.symlink_to(_text(root))
    return tree


def _zip(root: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    path = root / "global_checkpoints.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    return path


def _symlink_member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _declared_bomb(root: Path) -> Path:
    """A small zip whose central directory declares 3 GiB per member (what a zip bomb declares)."""
    path = _zip(root, [(ZIP_VAE, b"a" * 100), ("checkpoints/detection/FT_Epoch_latest.pt", b"b" * 100)])
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        struct.pack_into("<I", data, start + 24, 3 << 30)
        start = data.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(data))
    return path


def _deflate_bomb(root: Path) -> Path:
    """A genuine bomb: 1 GiB of zeros deflated to 4.7 MB, sizes declared honestly (under the bound)."""
    path = root / "global_checkpoints.zip"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(ZIP_VAE, "w", force_zip64=True) as member,
    ):
        block = bytes(1 << 24)
        for _ in range(64):
            member.write(block)
    return path


_refused_convert("text-file", _text, r"neither a folder nor a readable zip")
_refused_convert("symlink-to-text-file", _symlink_to_text, r"neither a folder nor")
_refused_convert("tree-with-symlink-to-text", _tree_with_linked_text, r"not a PyTorch checkpoint")
_refused_convert("zip-dotdot-member", lambda r: _zip(r, [("../" + ZIP_VAE, b"x")]), r"outside the archive")
_refused_convert("zip-absolute-member", lambda r: _zip(r, [("/" + ZIP_VAE, b"x")]), r"absolute path")
_refused_convert(
    "zip-symlink-member", lambda r: _zip(r, [(_symlink_member(ZIP_VAE), b"/etc/passwd")]), r"symbolic link"
)
_refused_convert("zip-bomb-declared-3GiB", _declared_bomb, r"declare more than \d+ uncompressed bytes")
_refused_convert("zip-bomb-1GiB-of-zeros", _deflate_bomb, r"not a PyTorch checkpoint|cannot be read|refused")


def _official_tree(root: Path, poison: bool = False) -> Path | None:
    """A release-layout tree with one genuine VAE_A checkpoint made by ../shared/spec's weight rule."""
    spec = SHARED / "spec" / "fixtures" / "make_weights.py"
    manifest = SHARED / "spec" / "checkpoint-manifest.json"
    if not spec.is_file() or not manifest.is_file():
        return None
    import importlib.util

    import torch

    loader = importlib.util.spec_from_file_location("hostile_make_weights", spec)
    module = importlib.util.module_from_spec(loader)
    assert loader.loader is not None
    loader.loader.exec_module(module)
    state = module.make_state_dict(module.load_manifest(manifest), "VAE_A_quality", 7)
    if poison:
        key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
        state[key][0, 0, 0, 0] = float("nan")
    path = root / "official" / TREE_VAE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return root / "official"


@case("convert-genuine-checkpoint")
def _convert_ok(root: Path) -> Case:
    tree = _official_tree(root)
    if tree is None:
        return Case("", ["convert"], [], 0, skip="../shared/spec (the weight rule) is absent")
    out = root / "w"

    def check() -> str | None:
        return None if (out / "vae_a" / "model.safetensors").is_file() else "no vae_a written"

    return Case("", _convert(out, tree), [tree], 0, refused=False, check=check)


@case("convert-nan-in-checkpoint")
def _convert_nan(root: Path) -> Case:
    tree = _official_tree(root, poison=True)
    if tree is None:
        return Case("", ["convert"], [], 2, skip="../shared/spec (the weight rule) is absent")
    out = root / "w"
    return Case("", _convert(out, tree), [tree], 2, r"non-finite", check=_absent(out, "--out folder"))


@case("convert-into-out-holding-stale-components")
def _stale(root: Path) -> Case:
    out = root / "w"
    shutil.copytree(builtin_weights(), out)
    tree = _official_tree(root) or _tree_with_linked_text(root)
    return Case("", _convert(out, tree), [out, tree], 2, r"already holds a weights set")


@case("convert-overwrite-into-out-with-foreign-files")
def _foreign(root: Path) -> Case:
    out = root / "w"
    shutil.copytree(builtin_weights(), out)
    (out / "my_notes.txt").write_text("keep me\n")
    tree = _official_tree(root) or _tree_with_linked_text(root)
    argv = _convert(out, tree, overwrite=True)
    return Case("", argv, [out, tree], 2, r"not part of a weights set")


# ------------------------------------------------------------------------------------ serve


@case("serve-port-70000")
def _port(root: Path) -> Case:
    return Case("", ["serve", "--port", "70000"], [], 2, r"between 0 and 65535")


def _multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _http(method: str, url: str, body: bytes | None = None, kind: str | None = None) -> tuple[int, dict]:
    """(status, JSON body or ``{"error": text}``), never raising on an HTTP error."""
    request = urllib.request.Request(url, data=body, method=method)
    if kind:
        request.add_header("Content-Type", kind)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    except OSError as exc:
        return 0, {"error": str(exc)}
    try:
        decoded = json.loads(payload) if payload else {}
    except ValueError:
        decoded = {"error": payload.decode(errors="replace")[:120]}
    return status, decoded if isinstance(decoded, dict) else {"error": str(decoded)[:120]}


def _post_photo(base: str, path: Path) -> tuple[int, dict]:
    body, kind = _multipart(path.read_bytes(), path.name)
    return _http("POST", f"{base}/api/jobs", body, kind)


def _wait_status(base: str, job: str, wanted: set[str], timeout: float) -> str:
    """Poll a job until its status is one of ``wanted`` (or ``timeout``); the last status seen."""
    deadline, status = time.monotonic() + timeout, "unknown"
    while time.monotonic() < deadline:
        code, state = _http("GET", f"{base}/api/jobs/{job}")
        status = str(state.get("status")) if code == 200 else f"HTTP {code}"
        if status in wanted:
            break
        time.sleep(0.05)
    return status


def _wait_for_url(child: Child, log: Path) -> str | None:
    deadline = time.monotonic() + SERVE_START_S
    while time.monotonic() < deadline and child.running():
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if found:
            return f"http://127.0.0.1:{found.group(1)}"
        time.sleep(0.1)
    return None


def _stop(child: Child, number: int = signal.SIGTERM, limit: float = 30.0) -> tuple[str, list[str]]:
    """Send ``number`` and time the exit: a text for the outcome and a problem if it took too long."""
    sent = time.monotonic()
    child.signal(number)
    while child.running() and time.monotonic() - sent < limit:
        time.sleep(0.02)
    took = time.monotonic() - sent
    name = signal.Signals(number).name
    if child.running():
        return f"{name}: still running after {limit:.0f} s", [f"still running {limit:.0f} s after {name}"]
    return f"{name}: stopped in {took:.1f} s", []


def _upload(path: Path, expected: int) -> Interaction:
    """POST ``path`` as a job, expect ``expected``, then stop the server with SIGTERM."""

    def interact(child: Child, log: Path) -> tuple[str, list[str]]:
        base = _wait_for_url(child, log)
        if base is None:
            return "the server never said where it listens", ["no URL in the log"]
        status, body = _post_photo(base, path)
        problems = [] if status == expected else [f"HTTP {status}, expected {expected}"]
        stopped, late = _stop(child)
        return f"HTTP {status}: {body.get('error', body)}; {stopped}", problems + late

    return interact


def _serve_case(
    root: Path, files: dict[str, bytes], interact: Callable[..., Interaction], message: str
) -> Case:
    """``serve --port 0`` with a private temporary folder that must be empty once it exits."""
    paths = []
    for name, data in files.items():
        paths.append(root / name)
        paths[-1].write_bytes(data)
    private = root / "tmp"
    private.mkdir()

    def check() -> str | None:
        left = os.listdir(private)
        return f"left {left} in its temporary folder" if left else None

    argv = ["serve", "--port", "0", "--no-faces"]
    env = {"TMPDIR": str(private)}
    built = Case("", argv, paths, 0, message, refused=False, check=check, env=env, interact=interact(*paths))
    built.check = _all(check, _no_line(built, r"Traceback|Aborted|core dumped"))
    return built


def _no_line(case: Case, pattern: str) -> Callable[[], str | None]:
    def check() -> str | None:
        found = re.search(pattern, case.log.read_text(errors="replace"))
        return f"printed {found.group(0)!r}" if found else None

    return check


@case("serve-upload-12000x12000-header-png")
def _serve_huge(root: Path) -> Case:
    files = {"huge.png": blank_bilevel_png(HUGE_SIDE)}
    built = _serve_case(root, files, lambda p: _upload(p, 413), r"HTTP 413: .*too many pixels")
    built.refused = True
    limit = _default_max_pixels()
    if limit >= HUGE_SIDE**2:
        built.skip = f"this machine's default limit ({limit / 1e6:.0f} MP) admits 144 MP"
    return built


@case("serve-upload-2.5-gigapixel-bomb")
def _serve_bomb(root: Path) -> Case:
    files = {"bomb.png": blank_bilevel_png(BOMB_SIDE)}
    built = _serve_case(root, files, lambda p: _upload(p, 413), r"HTTP 413: .*too many pixels")
    built.refused = True
    return built


BIG_SIDE = 1024
"""A photo the built-in weights take tens of seconds on (so a cancellation has something to stop)."""


def _png_of(h: int, w: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(h, w, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def _sigterm_while_restoring(path: Path) -> Interaction:
    """Upload a photo, SIGTERM the server once its job runs: it must stop cleanly and soon."""

    def interact(child: Child, log: Path) -> tuple[str, list[str]]:
        base = _wait_for_url(child, log)
        if base is None:
            return "the server never said where it listens", ["no URL in the log"]
        status, body = _post_photo(base, path)
        if status != 202:
            return f"HTTP {status}: {body.get('error', body)}", [f"upload answered {status}, expected 202"]
        state = _wait_status(base, body["id"], {"running", "done", "failed"}, 60)
        stopped, late = _stop(child)
        problems = [] if state == "running" else [f"job {state} when SIGTERM was sent, expected running"]
        return f"HTTP 202, job {state}; {stopped}", problems + late

    return interact


def _delete_running(big: Path, small: Path) -> Interaction:
    """DELETE a running job: answered 204, forgotten, and the next photo is not kept waiting."""

    def interact(child: Child, log: Path) -> tuple[str, list[str]]:
        base = _wait_for_url(child, log)
        if base is None:
            return "the server never said where it listens", ["no URL in the log"]
        status, body = _post_photo(base, big)
        if status != 202:
            return f"HTTP {status}: {body.get('error', body)}", [f"upload answered {status}, expected 202"]
        problems = []
        state = _wait_status(base, body["id"], {"running", "done", "failed"}, 60)
        if state != "running":
            problems.append(f"job {state} before DELETE, expected running")
        deleted, answer = _http("DELETE", f"{base}/api/jobs/{body['id']}")
        if deleted != 204:
            problems.append(f"DELETE answered {deleted} ({answer.get('error', '')}), expected 204")
        after, _ = _http("GET", f"{base}/api/jobs/{body['id']}")
        if after != 404:
            problems.append(f"deleted job still answers {after}")
        sent = time.monotonic()
        status, second = _post_photo(base, small)
        final = (
            _wait_status(base, second.get("id", "none"), {"done", "failed"}, 60) if status == 202 else status
        )
        waited = time.monotonic() - sent
        if final != "done" or waited > 20:
            problems.append(f"the next photo was {final} after {waited:.0f} s")
        stopped, late = _stop(child)
        text = f"DELETE running job: HTTP {deleted}, then GET {after}; next photo {final} in {waited:.1f} s"
        return f"{text}; {stopped}", problems + late

    return interact


@case("serve-sigterm-while-restoring")
def _serve_sigterm(root: Path) -> Case:
    files = {"big.png": _png_of(BIG_SIDE, BIG_SIDE)}
    return _serve_case(root, files, _sigterm_while_restoring, r"SIGTERM: stopped")


@case("serve-delete-running-job")
def _serve_delete(root: Path) -> Case:
    files = {"big.png": _png_of(BIG_SIDE, BIG_SIDE), "small.png": _png_of(24, 32, 1)}
    return _serve_case(root, files, _delete_running, r"DELETE running job: HTTP 204")


def _interrupt_after_first(out: Path) -> Interaction:
    """Ctrl-C (SIGINT to the process) once the first restored photo exists."""

    def interact(child: Child, log: Path) -> tuple[str, list[str]]:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while child.running() and time.monotonic() < deadline and not list(out.glob("*.png")):
            time.sleep(0.02)
        if not child.running():
            return "finished before it could be interrupted", ["finished before SIGINT"]
        stopped, late = _stop(child, signal.SIGINT, 60)
        return stopped, late

    return interact


@case("run-ctrl-c-mid-batch")
def _ctrl_c(root: Path) -> Case:
    album = root / "album"
    for i in range(10):
        _photo(album / f"p{i:02d}.png", 256, 256, i)
    out = root / "out"

    def check() -> str | None:
        done = sorted(out.glob("*.png"))
        if not 1 <= len(done) < 10:
            return f"{len(done)} of 10 photos written"
        broken = [p.name for p in done if _image_size(p) != (256, 256)]
        hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
        return f"broken {broken}, temporaries {hidden}" if broken or hidden else None

    built = Case("", _run(album, out), [album], 130, r"interrupted", refused=False, check=check)
    built.interact = _interrupt_after_first(out)
    return built


# ------------------------------------------------------------------------------------ running


def digest(paths: Iterable[Path], exclude: Iterable[Path] = ()) -> dict[str, str]:
    """SHA-256 of every regular file under ``paths`` (links and FIFOs by kind and target, never read)."""
    skipped = {os.path.abspath(p) for p in exclude}
    found: dict[str, str] = {}

    def visit(path: Path) -> None:
        if os.path.abspath(path) in skipped:
            return
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            found[str(path)] = "missing"
            return
        if stat.S_ISLNK(info.st_mode):
            found[str(path)] = f"link -> {os.readlink(path)}"
        elif stat.S_ISDIR(info.st_mode):
            found[str(path)] = "folder"
            for child in sorted(path.iterdir()):
                visit(child)
        elif stat.S_ISREG(info.st_mode):
            hasher = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
            found[str(path)] = hasher.hexdigest()
        else:
            found[str(path)] = f"special {stat.S_IFMT(info.st_mode):o}"

    for path in paths:
        visit(path)
    return found


def child_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a case's child: no torchrun variables, no downloaded weights, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in (*STRAY_ENV, "LATENT_RESTORE_WEIGHTS")}
    home = root.parent / ".home"
    home.mkdir(exist_ok=True)
    env.update(LATENT_RESTORE_HOME=str(home), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


SPAWNER = r"""
import json, os, subprocess, sys, threading

lock = threading.Lock()


def say(message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def run(request):
    try:
        with open(request["log"], "ab") as log:
            proc = subprocess.Popen(
                request["argv"], cwd=request["cwd"], env=request["env"], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
            )
    except OSError as exc:
        say({"id": request["id"], "error": str(exc)})
        return
    say({"id": request["id"], "pid": proc.pid})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    say({"id": request["id"], "code": proc.returncode, "maxrss_kib": usage.ru_maxrss})


for line in sys.stdin:
    threading.Thread(target=run, args=(json.loads(line),)).start()
"""
"""A lean process that starts the cases' children and reaps them with ``os.wait4``.

The peak RSS that ``wait4`` reports is the high-water mark of the child's whole life, and that
life starts as a fork of its parent: Linux carries the forked image's resident size through
``exec`` into ``ru_maxrss``. Forked from this script (torch imported to build the weights
cases), every child would report some 800 MB before running a line; forked from a bare
``python -S`` it starts at about 10 MB.
"""


class Spawner:
    """Runs children through :data:`SPAWNER`; thread-safe, one instance per run."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lock = threading.Lock()
        self._queues: dict[int, queue.Queue[dict]] = {}
        self._next = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            self._queues[message["id"]].put(message)

    def start(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> Child:
        """Start ``argv`` in its own session, output appended to ``log``."""
        with self._lock:
            self._next += 1
            ident = self._next
            self._queues[ident] = queue.Queue()
            request = {"id": ident, "argv": argv, "cwd": str(cwd), "env": env, "log": str(log)}
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        started = self._queues[ident].get(timeout=60)
        if "error" in started:
            raise OSError(started["error"])
        return Child(started["pid"], self._queues[ident])

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(60)


class Child:
    """A running case command: its pid, signals to its process group, and its end."""

    def __init__(self, pid: int, messages: queue.Queue[dict]) -> None:
        self.pid = pid
        self._messages = messages
        self._end: dict | None = None

    def running(self) -> bool:
        if self._end is None:
            try:
                self._end = self._messages.get_nowait()
            except queue.Empty:
                return True
        return False

    def signal(self, number: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def wait(self, timeout: float) -> tuple[int | None, int]:
        """Exit code (None when it had to be killed after ``timeout`` seconds) and peak RSS in bytes."""
        killed = False
        if self._end is None:
            try:
                self._end = self._messages.get(timeout=timeout)
            except queue.Empty:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                killed = True
                self._end = self._messages.get(timeout=60)
        return (None if killed else self._end["code"]), self._end["maxrss_kib"] * 1024


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]


def _pick_message(lines: list[str], pattern: str | None) -> str:
    """The line that says what happened: the expected one, else the first error, else the last."""
    if pattern:
        for line in lines:
            if re.search(pattern, line):
                return line
    for line in lines:
        if (
            line.startswith(("ERROR", "CRITICAL"))
            or "error:" in line
            or re.search(r"^(failed|skipped):", line)
        ):
            return line
    return lines[-1] if lines else "(no output)"


def run_case(case: Case, spawner: Spawner) -> Result:
    """Run one case's command as a child process and judge it against the case's expectation."""
    if case.skip:
        return Result(case, None, f"skipped: {case.skip}", True, 0, 0.0, [])
    before = digest(case.inputs, case.exclude)
    log = case.log
    command = [sys.executable, "-m", "latent_restore.cli", *case.argv]
    start = time.monotonic()
    log.write_bytes(b"")
    child = spawner.start(command, case.root, child_env(case.root, case.env), log)
    detail, problems = "", []
    if case.interact is not None:
        try:
            detail, problems = case.interact(child, log)
        except Exception as exc:  # a broken interaction is a failed case, not a crash of the run
            detail, problems = f"interaction failed: {exc!r}", [f"interaction failed: {exc!r}"]
            child.signal(signal.SIGTERM)
    code, peak = child.wait(case.timeout)
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    lines = _lines(text)
    if detail:
        lines.insert(0, detail)
    identical = digest(case.inputs, case.exclude) == before
    problems = list(problems)
    if code is None:
        outcome = f"timed out after {case.timeout:.0f} s"
        problems.append(outcome)
    else:
        message = _pick_message(lines, case.message)
        outcome = f"exit {code}: " + (
            "restored" if code == 0 and not case.message and not detail else message
        )
        if code != case.code:
            problems.append(f"exit {code}, expected {case.code}")
        if case.message and not any(re.search(case.message, line) for line in lines):
            problems.append(f"no line matches {case.message!r}")
    if "Traceback (most recent call last)" in text:
        problems.append("printed a traceback")
    if not identical:
        problems.append("an input changed")
    if case.refused and peak >= REFUSED_PEAK_BYTES:
        problems.append(f"refusal peaked at {peak / 2**20:.0f} MB")
    if case.check is not None and code is not None:
        try:
            problem = case.check()
        except Exception as exc:  # a check that cannot run says so
            problem = f"check failed: {exc!r}"
        if problem:
            problems.append(problem)
    return Result(case, code, outcome, identical, peak, seconds, problems)


def build_cases(root: Path, only: str | None = None) -> Iterator[Case]:
    """Build each selected case in ``root/<name>`` (``only``: a regular expression on the names)."""
    for name, builder in BUILDERS:
        if only and not re.search(only, name):
            continue
        folder = root / name
        folder.mkdir(parents=True)
        built = builder(folder)
        built.name, built.root = name, folder
        yield built


def format_result(result: Result, root: Path) -> str:
    """One line: verdict, case, command, outcome, inputs, peak memory, seconds, problems."""
    case = result.case
    verdict = "SKIP" if case.skip else ("PASS" if result.passed else "FAIL")

    def short(text: str) -> str:
        return text.replace(str(case.root), "$T").replace(str(root), "$ROOT").replace(str(REPO), "$REPO")

    command = short(" ".join(a if a and " " not in a else repr(a) for a in case.argv))
    env = " ".join(f"{k}={v}" for k, v in case.env.items() if k != "TMPDIR")
    command = f"{env} {command}" if env else command
    outcome = short(result.outcome)
    if len(outcome) > 200:
        outcome = outcome[:197] + "..."
    if case.skip:
        return f"{verdict} {case.name} | {command} | {outcome}"
    inputs = "inputs identical" if result.identical else "INPUTS CHANGED"
    line = (
        f"{verdict} {case.name} | {command} | {outcome} | {inputs} | "
        f"peak {result.peak_bytes / 2**20:.0f} MB | {result.seconds:.1f} s"
    )
    return line + (f" | PROBLEMS: {'; '.join(short(p) for p in result.problems)}" if result.problems else "")


def summary_line(results: list[Result], seconds: float) -> str:
    ran = [r for r in results if not r.case.skip]
    failed = [r for r in ran if not r.passed]
    refusals = [r for r in ran if r.case.refused]
    worst = max(refusals, key=lambda r: r.peak_bytes, default=None)
    peak = f"; largest refusal peak {worst.peak_bytes / 2**20:.0f} MB ({worst.case.name})" if worst else ""
    changed = sum(not r.identical for r in ran)
    return (
        f"SUMMARY {len(results)} cases: {len(ran) - len(failed)} passed, {len(failed)} failed, "
        f"{len(results) - len(ran)} skipped; inputs changed in {changed}{peak}; {seconds:.0f} s"
        + (f"; failed: {', '.join(r.case.name for r in failed)}" if failed else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the cases whose name matches this regular expression")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="cases run at once (default: 2)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus folder and print where it is")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(name for name, _ in BUILDERS))
        return 0
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="hostile-inputs-"))
    try:
        cases = list(build_cases(root, args.only))
        spawner = Spawner()
        try:
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                results = []
                for result in pool.map(lambda c: run_case(c, spawner), cases):
                    results.append(result)
                    print(format_result(result, root), flush=True)
        finally:
            spawner.close()
        print(summary_line(results, time.monotonic() - start), flush=True)
    finally:
        if args.keep:
            print(f"corpus kept in {root}")
        else:
            _remove(root)
    return 1 if any(not r.passed for r in results) else 0


def _remove(root: Path) -> None:
    """Remove the corpus, FIFOs and read-only leftovers included."""
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o700)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
