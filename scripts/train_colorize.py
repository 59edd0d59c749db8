"""Train the colorizer (L -> ab U-Net): phase pretrain (L1), then phase gan (L1 + PatchGAN).

    python scripts/train_colorize.py --config scripts/configs/full/colorize.yaml --out runs/colorize_l1
    python scripts/train_colorize.py --config scripts/configs/full/colorize.yaml --phase gan \\
        --init runs/colorize_l1/weights/colorize --out runs/colorize_gan

Writes RUN_DIR/weights/colorize.
"""

from __future__ import annotations

import sys

import training_args

from latent_restore.colorize.training import ColorizePhase, ColorizeTrainingConfig, build_colorize_task


def main(argv: list[str] | None = None) -> int:
    p = training_args.parser(__doc__.split("\n")[0])
    p.add_argument("--phase", choices=[v.value for v in ColorizePhase], help="pretrain (L1) or gan")
    p.add_argument("--init", help="colorize component directory to start from (the pre-trained weights)")
    args = p.parse_args(argv)
    extra = [f"phase={args.phase}"] if args.phase else []
    extra += [training_args.assign("init_from", args.init)] if args.init else []
    return training_args.run(p, args, ColorizeTrainingConfig, build_colorize_task, extra)


if __name__ == "__main__":
    sys.exit(main())
