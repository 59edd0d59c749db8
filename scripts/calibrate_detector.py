"""Pick the scratch detector's threshold on photos it did not train on and save the calibrated component.

    python scripts/calibrate_detector.py --weights ../runs/scratch/weights/scratch_detector \
        --held-out-of ../shared/data/train_extra/clean --out ../runs/scratch/calibrated

``--photos`` folders must hold no training photo; ``--held-out-of`` folders contribute only their
hash-held-out fifth, which a config with ``exclude_held_out`` never trains on. Each photo is
centre-cropped to ``--size`` and given the default synthetic defects (seeded by ``--seed`` and its
position). Do not calibrate on the folder ``latent-restore eval`` scores. Writes
OUT/scratch_detector and prints the mask F1 per threshold.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from latent_restore.core.checkpoint import load_component, save_component
from latent_restore.detector_calibration import calibrate_threshold, with_threshold
from latent_restore.evaluation import EvalProtocol, build_cases
from stage2_mapping.scratch_detector import ScratchDetector

logger = logging.getLogger("calibrate_detector")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="the trained scratch_detector component")
    p.add_argument("--photos", nargs="+", type=Path, default=[], help="folders of photos not trained on")
    p.add_argument(
        "--held-out-of", nargs="+", type=Path, default=[], help="training folders: use their held-out fifth"
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the calibrated component")
    p.add_argument("--size", type=int, default=256, help="centre-crop side (default 256, as eval)")
    p.add_argument("--count", type=int, default=100, help="photos used at most per folder (default 100)")
    p.add_argument("--seed", type=int, default=1, help="degradation seed (default 1; eval uses 0)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.photos and not args.held_out_of:
        p.error("give --photos and/or --held-out-of")

    detector = load_component(args.weights, expected=ScratchDetector)
    folders = [(folder, False) for folder in args.photos] + [(folder, True) for folder in args.held_out_of]
    cases = []
    for folder, held_out in folders:
        protocol = EvalProtocol(
            str(folder), size=args.size, seed=args.seed, with_scratch=True, held_out_only=held_out
        )
        cases += [(case.degraded, case.mask) for case in build_cases(protocol)[: args.count]]
    result = calibrate_threshold(detector, cases)
    for threshold, f1 in result.f1.items():
        logger.info("threshold %.2f: mask F1 %.3f", threshold, f1)
    logger.info(
        "best %.2f (F1 %.3f; released 0.40: %.3f) on %d photos",
        result.best,
        result.f1[result.best],
        result.f1.get(0.4, float("nan")),
        len(cases),
    )
    save_component(with_threshold(detector, result.best), args.out / "scratch_detector")
    return 0


if __name__ == "__main__":
    sys.exit(main())
