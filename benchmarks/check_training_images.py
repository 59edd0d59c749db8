"""What the up-front check of training images costs, against decoding every file.

    python benchmarks/check_training_images.py ../shared/data/train_extra
    python benchmarks/check_training_images.py --make 1000 --size 2048x1536

Prints, per folder, the number of files, how many the check rejects, and milliseconds per file for
:func:`latent_restore.core.data.image_problem` and for a full decode
(:func:`latent_restore.core.imaging.decode_image`), with their ratio. ``--make N`` writes N
synthetic photo-like files (JPEG and PNG, a few of them truncated) into a temporary folder first.
Timings are with the files in the page cache (each folder is read once before timing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from latent_restore.core.data import image_problem, list_images
from latent_restore.core.imaging import ImageReadError, decode_image


def make_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> None:
    """``count`` smooth noisy photos, 4 in 5 JPEG and 1 in 5 PNG; every 50th file truncated to 2/3."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo_{index:05d}.{'png' if index % 5 == 4 else 'jpg'}"
        Image.fromarray(pixels).save(path, quality=90)
        if index % 50 == 49:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 2 // 3])


def _decode_problem(path: Path) -> str | None:
    try:
        decode_image(path)
    except (ImageReadError, OSError) as exc:
        return str(exc)
    return None


def measure(folder: Path) -> None:
    paths = list_images(folder)
    for path in paths:
        path.read_bytes()
    start = time.perf_counter()
    checked = {p: image_problem(p) for p in paths}
    check_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = {p: _decode_problem(p) for p in paths}
    decode_s = time.perf_counter() - start
    rejected = sum(r is not None for r in checked.values())
    disagree = sum((checked[p] is None) != (decoded[p] is None) for p in paths)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    n = max(1, len(paths))
    ratio = decode_s / max(check_s, 1e-9)
    print(
        f"{folder}: {len(paths)} files, {size_mb:.0f} MB, rejected {rejected}, "
        f"disagree with decoding {disagree}; check {check_s:.2f} s ({1000 * check_s / n:.1f} ms/file), "
        f"full decode {decode_s:.2f} s ({1000 * decode_s / n:.1f} ms/file), ratio {ratio:.1f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="*", type=Path)
    p.add_argument("--make", type=int, default=0, metavar="N", help="also measure N synthetic photos")
    p.add_argument("--size", default="2048x1536", help="WIDTHxHEIGHT of the synthetic photos")
    args = p.parse_args()
    for folder in args.folders:
        measure(folder)
    if args.make:
        width, height = (int(v) for v in args.size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            make_photos(Path(tmp), args.make, width, height)
            measure(Path(tmp))


if __name__ == "__main__":
    main()
