"""Pick the colorizer's chroma scale on photos it did not train on and save the calibrated component.

    python scripts/calibrate_colorizer.py --weights ../runs/colorize/weights/colorize \
        --photos ../shared/data/train_extra/clean/bsds500/test \
        --held-out-of ../shared/data/train_extra/clean/imagenet_sample --out ../runs/colorize/calibrated

``--photos`` folders must hold no training photo (the lite config keeps BSDS500 test out of
training); ``--held-out-of`` folders contribute only their hash-held-out fifth, which a config with
``exclude_held_out`` never trains on. Use folders of different kinds: the best scale depends on the
photos (measured: 1.1 on BSDS500 test alone, 0.3 on the ImageNet sample's held-out fifth alone), and
a mix is what a user's photos are. Writes OUT/colorize and prints CIEDE2000 per scale.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from latent_restore.colorize.calibration import calibrate, with_chroma_scale
from latent_restore.colorize.network import Colorizer
from latent_restore.core.checkpoint import load_component, save_component
from latent_restore.core.data import center_square_resize, list_images, load_rgb
from latent_restore.core.splits import split

logger = logging.getLogger("calibrate_colorizer")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="the trained colorize component")
    p.add_argument("--photos", nargs="+", type=Path, default=[], help="folders of photos not trained on")
    p.add_argument(
        "--held-out-of", nargs="+", type=Path, default=[], help="training folders: use their held-out fifth"
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the calibrated component")
    p.add_argument("--size", type=int, default=256, help="centre-crop side (default 256, as the tests)")
    p.add_argument("--count", type=int, default=100, help="photos used at most per folder (default 100)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = load_component(args.weights, expected=Colorizer)
    if not args.photos and not args.held_out_of:
        p.error("give --photos and/or --held-out-of")
    sources = [list_images(folder) for folder in args.photos]
    sources += [split(list_images(folder), folder)[1] for folder in args.held_out_of]
    paths = [path for source in sources for path in source[: args.count]]
    result = calibrate(model, (center_square_resize(load_rgb(path), args.size) for path in paths))
    for scale, error in result.errors.items():
        logger.info("chroma scale %.1f: CIEDE2000 %.3f", scale, error)
    logger.info(
        "best %.1f (%.3f; gray %.3f) on %d photos",
        result.best,
        result.errors[result.best],
        result.errors.get(0.0, float("nan")),
        len(paths),
    )
    save_component(with_chroma_scale(model, result.best), args.out / "colorize")
    return 0


if __name__ == "__main__":
    sys.exit(main())
