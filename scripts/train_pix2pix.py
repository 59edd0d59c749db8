"""Train the pix2pix restoration baseline (U-Net + 70x70 PatchGAN, L1 x100) on synthetic pairs.

    python scripts/train_pix2pix.py --config scripts/configs/full/pix2pix.yaml --out runs/pix2pix

Writes RUN_DIR/weights/pix2pix.
"""

from __future__ import annotations

import sys

import training_args

from latent_restore.pix2pix.training import Pix2PixTrainingConfig, build_pix2pix_task


def main(argv: list[str] | None = None) -> int:
    p = training_args.parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    return training_args.run(p, args, Pix2PixTrainingConfig, build_pix2pix_task, [])


if __name__ == "__main__":
    sys.exit(main())
