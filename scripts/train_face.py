"""Train the SPADE face generator on aligned faces paired with synthetically degraded copies.

    python scripts/train_face.py --config scripts/configs/full/face_256.yaml --out runs/face_256

Writes RUN_DIR/weights/face_256 (or face_512 when model.load_size is 512).
"""

from __future__ import annotations

import sys

import training_args

from face_enhance.training import FaceTrainingConfig, build_face_task


def main(argv: list[str] | None = None) -> int:
    p = training_args.parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    return training_args.run(p, args, FaceTrainingConfig, build_face_task, [])


if __name__ == "__main__":
    sys.exit(main())
