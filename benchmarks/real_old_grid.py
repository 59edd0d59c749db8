"""Grid of real old photos: input | NL-means + auto levels | latent-restore quality | with scratches.

    python benchmarks/real_old_grid.py --out grid.jpg [--weights DIR] [--pattern 'bopbtl_*'] [--side 320]

Real old photos have no clean original, so this is for the eye: each photo of
``../shared/data/real_old`` and ``../shared/data/real_old_scratch`` is resized to ``--side`` on its
longer edge and restored at that size by the classical baseline a person would use (OpenCV NL-means,
then a per-channel auto-levels stretch), by quality mode, and by scratch mode when the weights have
its components (else that column is left white). MODEL_CARD.md shows the grid of the MIT-licensed
``bopbtl_*`` photos (``--pattern 'bopbtl_*'``), the only ones we may show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from latent_restore.core.data import load_rgb
from latent_restore.core.imaging import quantize
from latent_restore.evaluation import auto_levels, nlmeans
from latent_restore.pipeline import RestorationOptions, RestorationPipeline
from latent_restore.weights import Component

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = ("real_old", "real_old_scratch")
PAD = 3


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _row(tiles: list[np.ndarray], side: int) -> np.ndarray:
    height = max(t.shape[0] for t in tiles)
    cells = []
    for tile in tiles:
        cell = np.full((height + 2 * PAD, side + 2 * PAD, 3), 255, np.uint8)
        cell[PAD : PAD + tile.shape[0], PAD : PAD + tile.shape[1]] = tile
        cells.append(cell)
    return np.concatenate(cells, axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="grid image to write (.jpg or .png)")
    p.add_argument("--weights", help="weights directory (default: the built-in weights)")
    p.add_argument("--pattern", default="*", help="file-name pattern of the photos to show")
    p.add_argument("--side", type=int, default=320, help="longer side of each photo in the grid")
    args = p.parse_args(argv)

    pipeline = RestorationPipeline.from_pretrained(args.weights)
    scratch = all(
        pipeline.components.available(c) for c in (Component.SCRATCH_DETECTOR, Component.MAPPING_SCRATCH)
    )
    paths = sorted(
        path for folder in FOLDERS for path in (DATA / folder).glob(args.pattern) if path.is_file()
    )
    if not paths:
        print(f"no photos matching {args.pattern!r} under {DATA}", file=sys.stderr)
        return 1
    rows = []
    for path in paths:
        photo = _fit(load_rgb(path), args.side)
        quality = quantize(pipeline(photo, RestorationOptions()).image)
        blank = np.full_like(photo, 255)
        scratched = (
            quantize(pipeline(photo, RestorationOptions(with_scratch=True)).image) if scratch else blank
        )
        rows.append(_row([photo, auto_levels(nlmeans(photo)), quality, scratched], args.side))
        print(f"{path.name}: done", flush=True)
    grid = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(args.out), np.ascontiguousarray(grid[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    last = "with scratches" if scratch else "(no scratch weights)"
    print(f"columns: input | NL-means + auto levels | quality | {last}")
    print(f"{len(paths)} photos -> {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
