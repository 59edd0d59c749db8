"""bf16 against fp32: speed-up and PSNR of the bf16 output against the fp32 output.

    python benchmarks/precision.py [--weights DIR] [--size 512] [--with-scratch]

Without ``--weights`` the released architectures with seeded random values are used (written to a
temporary folder). bf16 runs natively only on CUDA and on CPUs with AVX-512 BF16 or AMX.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from latent_restore.pipeline import (
    Precision,
    RestorationOptions,
    RestorationPipeline,
    bf16_supported,
    resolve_device,
)

try:
    from _weights import write_full_size_weights
except ImportError:  # run as a module
    from benchmarks._weights import write_full_size_weights


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--with-scratch", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, native bf16: {bf16_supported(device)}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or write_full_size_weights(Path(tmp) / "weights")
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0 : args.size, 0 : args.size] / args.size
        photo = np.clip(
            np.stack([np.sin(9 * xx + c) * np.cos(7 * yy) for c in range(3)], -1) * 0.4 + 0.5, 0, 1
        )
        photo = np.clip(photo + rng.normal(0, 0.04, photo.shape), 0, 1).astype(np.float32)
        options = RestorationOptions(with_scratch=args.with_scratch, faces=False)
        outputs, times = {}, {}
        for precision in (Precision.FP32, Precision.BF16):
            pipeline = RestorationPipeline.from_pretrained(weights, args.device, precision, faces=False)
            pipeline(photo, options)  # warm-up and model loading
            start = time.perf_counter()
            for _ in range(args.repeats):
                outputs[precision] = pipeline(photo, options).image
            times[precision] = (time.perf_counter() - start) / args.repeats
            print(f"{precision.value}: {times[precision]:.2f} s per {args.size}x{args.size} photo")
    speedup = times[Precision.FP32] / times[Precision.BF16]
    quality = psnr(outputs[Precision.BF16], outputs[Precision.FP32])
    print(f"bf16 speed-up {speedup:.2f}x, PSNR of bf16 vs fp32 output {quality:.1f} dB")


if __name__ == "__main__":
    main()
