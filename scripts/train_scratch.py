"""Train the scratch-detection U-Net on photos with synthetic defects and their masks.

The photos are grayscale for the released single-channel detector and RGB for `model.in_channels: 3`.

    python scripts/train_scratch.py --config scripts/configs/full/scratch.yaml --out runs/scratch

Writes RUN_DIR/weights/scratch_detector.
"""

from __future__ import annotations

import sys

import training_args

from stage2_mapping.training import ScratchTrainingConfig, build_scratch_task


def main(argv: list[str] | None = None) -> int:
    p = training_args.parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    return training_args.run(p, args, ScratchTrainingConfig, build_scratch_task, [])


if __name__ == "__main__":
    sys.exit(main())
