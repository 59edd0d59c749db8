"""Train VAE A (old photos: real and synthetic, with the latent discriminator) or VAE B (clean photos).

    python scripts/train_vae.py --config scripts/configs/full/vae_a.yaml --out runs/vae_a
    torchrun --nproc_per_node 4 scripts/train_vae.py --config scripts/configs/full/vae_b.yaml \\
        --out runs/vae_b --resume auto

Writes RUN_DIR/weights/vae_a, or vae_b_quality for domain B (``--set component=vae_b_scratch``
for the decoder of the scratch modes).
"""

from __future__ import annotations

import sys

import training_args

from stage1_vae.training import VAETrainingConfig, build_task


def main(argv: list[str] | None = None) -> int:
    p = training_args.parser(__doc__.split("\n")[0])
    p.add_argument("--domain", choices=["A", "B"], help="shorthand for --set domain=A|B")
    args = p.parse_args(argv)
    extra = [f"domain={args.domain}"] if args.domain else []
    return training_args.run(p, args, VAETrainingConfig, build_task, extra)


if __name__ == "__main__":
    sys.exit(main())
