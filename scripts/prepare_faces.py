"""Align the faces of photo folders into a training folder of ``SIZE x SIZE`` crops.

    python scripts/prepare_faces.py --size 128 --out ../faces_128 \
        ../shared/data/faces ../shared/data/train_extra/faces

Every face our detector finds is aligned with the pipeline's 5-point template, so the generator is
trained on the framing it will be given. Photos in the held-out split of each input folder are
skipped (``--all`` keeps them); photos where no face is found are dropped and counted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from face_enhance.crops import aligned_faces
from face_enhance.detection import FaceDetector
from latent_restore.core.atomic import write_atomic
from latent_restore.core.data import list_images, load_rgb
from latent_restore.core.imaging import encode_png
from latent_restore.core.splits import split

logger = logging.getLogger("prepare_faces")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="folders of photos or loose face crops")
    p.add_argument("--out", type=Path, required=True, help="folder for the aligned crops (created)")
    p.add_argument("--size", type=int, default=128, help="crop side: the face generator's load_size")
    p.add_argument("--all", action="store_true", help="keep the held-out photos too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    detector = FaceDetector()
    args.out.mkdir(parents=True, exist_ok=True)
    found = missed = unreadable = 0
    for root in args.inputs:
        paths = list_images(root)
        if not args.all:
            paths = split(paths, root)[0]
        for path in tqdm(paths, desc=root.name, unit="photo"):
            try:
                image = load_rgb(path)
            except OSError as exc:
                logger.warning("skipping %s: %s", path, exc)
                unreadable += 1
                continue
            crops = aligned_faces(image, detector, args.size)
            missed += not crops
            stem = "_".join(path.relative_to(root).with_suffix("").parts)
            for k, crop in enumerate(crops):
                write_atomic(args.out / f"{root.name}_{stem}_{k}.png", encode_png(crop))
            found += len(crops)
    logger.info(
        "%d faces written to %s; %d photos without a face, %d unreadable", found, args.out, missed, unreadable
    )
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
