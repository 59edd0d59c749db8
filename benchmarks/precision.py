"""bf16 against fp32: speed-up and PSNR of the bf16 output against the fp32 output.

    python benchmarks/precision.py [--weights DIR] [--size 512] [--with-scratch]
        [--photos ../shared/data/real_old --count 4] [--force]

Without ``--weights`` the released architectures with seeded random values are used (written to a
temporary folder). With ``--photos`` the first ``--count`` photos of a folder are restored instead
of a synthetic one, and the PSNR of the 8-bit bf16 output against the 8-bit fp32 output is printed
per photo. bf16 runs natively only on CUDA and on CPUs whose bfloat16 convolutions are faster
than float32 (AVX-512 BF16 or AMX, confirmed by a probe); elsewhere ``--precision bf16`` runs in
fp32 and the speed-up is 1. ``--force`` runs bfloat16 even where it is emulated, to measure its
error there (its time is then not what a user gets).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from latent_restore import devices
from latent_restore.core.imaging import read_photo
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
    """PSNR of two float [0, 1] images once both are rounded to 8 bits, as the PNGs a run writes."""
    a8, b8 = ((np.asarray(x, np.float64) * 255).round() for x in (a, b))
    mse = float(np.mean((a8 - b8) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def synthetic_photo(size: int) -> np.ndarray:
    """Smooth colour bands with noise (float RGB ``size x size x 3`` in [0, 1])."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    photo = np.clip(np.stack([np.sin(9 * xx + c) * np.cos(7 * yy) for c in range(3)], -1) * 0.4 + 0.5, 0, 1)
    return np.clip(photo + rng.normal(0, 0.04, photo.shape), 0, 1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--with-scratch", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--force", action="store_true", help="bf16 even where it is emulated")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, native bf16: {bf16_supported(device)}")
    if args.force:
        devices.bf16_supported = lambda device: True
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or write_full_size_weights(Path(tmp) / "weights")
        if args.photos is not None:
            files = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in {".png", ".jpg"})
            photos = {f.name: read_photo(f) for f in files[: args.count]}
        else:
            photos = {f"synthetic {args.size}x{args.size}": synthetic_photo(args.size)}
        options = RestorationOptions(with_scratch=args.with_scratch, faces=False)
        outputs: dict[Precision, dict[str, np.ndarray]] = {}
        times = {}
        for precision in (Precision.FP32, Precision.BF16):
            pipeline = RestorationPipeline.from_pretrained(weights, args.device, precision, faces=False)
            print(f"{precision.value}: networks in {pipeline.dtype}")
            pipeline(next(iter(photos.values())), options)  # warm-up and model loading
            start = time.perf_counter()
            for _ in range(args.repeats):
                outputs[precision] = {name: pipeline(p, options).image for name, p in photos.items()}
            times[precision] = (time.perf_counter() - start) / args.repeats
            print(f"{precision.value}: {times[precision]:.2f} s for {len(photos)} photo(s)")
    for name in photos:
        quality = psnr(outputs[Precision.BF16][name], outputs[Precision.FP32][name])
        print(f"  {name}: PSNR of the 8-bit bf16 output against fp32 {quality:.1f} dB")
    speedup = times[Precision.FP32] / times[Precision.BF16]
    print(f"bf16 speed-up {speedup:.2f}x" + (" (forced: emulated where not native)" if args.force else ""))


if __name__ == "__main__":
    main()
