"""What windowed attention costs in quality: scratched photos with whole-photo and windowed attention.

    python benchmarks/tiling_quality.py [--weights DIR] [--photos ../shared/data/real_old_scratch]
        [--windows 64 128] [--grid docs/images/tiling_quality.jpg]

Each photo's scratches are detected as ``run --with-scratch`` detects them; then the global stage
runs once with ``--scratch-context global`` and once per window side, the partial non-local block
attending within windows of that side whatever the time plan would choose, so small photos show
what large ones get. It prints, per photo and window, the PSNR of the windowed output against the
whole-photo output, in the hole pixels (where the attention fills in) and over the whole photo,
and their largest difference. ``--grid`` writes input | mask | whole-photo | first window, per
photo. The weights must hold a trained scratch set (the built-in one by default): random weights
would measure nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def grid(rows: list[list[np.ndarray]], height: int = 256) -> bytes:
    """JPEG of one row per photo, every image scaled to ``height``, rows padded white to one width."""
    import cv2

    strips = []
    for images in rows:
        scaled = [cv2.resize(i, (round(i.shape[1] * height / i.shape[0]), height)) for i in images]
        strips.append(
            np.concatenate([np.pad(i, ((2, 2), (2, 2), (0, 0)), constant_values=255) for i in scaled], 1)
        )
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(np.concatenate(strips, 0), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]
    )
    assert ok
    return data.tobytes()


def main() -> int:
    import torch

    from latent_restore.core.atomic import write_atomic
    from latent_restore.core.imaging import read_photo
    from latent_restore.pipeline import RestorationPipeline, ScratchContext

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights")
    p.add_argument("--photos", type=Path, default=Path("../shared/data/real_old_scratch"))
    p.add_argument("--windows", type=int, nargs="+", default=[64, 128], help="window sides in pixels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        print(f"no photos in {args.photos}")
        return 1
    pipeline = RestorationPipeline.from_pretrained(args.weights, device="cpu", faces=False)
    rows = []
    print("photo                      size      window  PSNR holes  PSNR photo  max |diff|")
    for file in files:
        rgb = read_photo(file).rgb
        mask = pipeline.detect_scratches(rgb)
        whole, _ = pipeline.restore_global(rgb, mask, False, ScratchContext.GLOBAL)
        whole8 = (whole * 255).round().astype(np.uint8)
        first = None
        for window in args.windows:
            tiled, _ = pipeline.restore_global(rgb, mask, False, window=window)
            tiled8 = (tiled * 255).round().astype(np.uint8)
            first = tiled8 if first is None else first
            holes = psnr(tiled8[mask], whole8[mask]) if mask.any() else float("inf")
            diff = int(np.abs(tiled8.astype(np.int16) - whole8).max())
            size = f"{rgb.shape[1]}x{rgb.shape[0]}"
            print(
                f"{file.name[:26]:26} {size:10} {window:5}  {holes:9.1f} dB  {psnr(tiled8, whole8):7.1f} dB"
                f"  {diff:6}   ({100 * mask.mean():.1f} % holes)"
            )
        source = (rgb * 255).round().astype(np.uint8)
        rows.append([source, np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1), whole8, first])
    if args.grid is not None:
        labels = ["input", "detected mask", "whole-photo attention", f"windows of {args.windows[0]} px"]
        write_atomic(args.grid, grid(rows))
        print(f"grid -> {args.grid} ({' | '.join(labels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
