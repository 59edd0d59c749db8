"""Train the latent mapping between a frozen VAE A encoder and a frozen VAE B decoder.

    python scripts/train_mapping.py --config scripts/configs/full/mapping_quality.yaml \\
        --vae-a runs/vae_a/weights/vae_a --vae-b runs/vae_b/weights/vae_b_quality --out runs/mapping

Variants (``--variant``): plain (quality mode), nonlocal (scratch mode, trained with defect masks),
patch_attention (HR mode). Writes RUN_DIR/weights/mapping_quality | mapping_scratch | mapping_hr.
"""

from __future__ import annotations

import sys

import training_args

from stage2_mapping.training import MappingTrainingConfig, MappingVariant, build_mapping_task


def main(argv: list[str] | None = None) -> int:
    p = training_args.parser(__doc__.split("\n")[0])
    p.add_argument("--vae-a", help="component directory of the trained VAE A")
    p.add_argument("--vae-b", help="component directory of the trained VAE B")
    p.add_argument("--variant", choices=[v.value for v in MappingVariant], help="mapping network variant")
    args = p.parse_args(argv)
    extra = [training_args.assign("vae_a", args.vae_a)] if args.vae_a else []
    extra += [training_args.assign("vae_b", args.vae_b)] if args.vae_b else []
    extra += [f"variant={args.variant}"] if args.variant else []
    return training_args.run(p, args, MappingTrainingConfig, build_mapping_task, extra)


if __name__ == "__main__":
    sys.exit(main())
