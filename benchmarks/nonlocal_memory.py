"""Peak memory and time of scratch-mode restoration: chunked partial non-local block vs the full matrix.

Runs VAE-A encoder -> mapping with the partial non-local block -> VAE-B decoder (the released
network sizes, seeded random weights) on a synthetic scratched photo at several sizes. Every
measurement runs in a fresh process so peak RSS is that run's own. The naive version (the released
formulation, ~16 N^2 bytes of attention matrices) is skipped where it would not fit in memory.

    python benchmarks/nonlocal_memory.py                  # 256, 512, 1024, 2048
    python benchmarks/nonlocal_memory.py --sizes 256 512  # a subset
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latent_restore.core.memory import available_memory

GIB = 1 << 30


def naive_attention_bytes(side: int) -> int:
    cells = (side // 4) ** 2
    return 4 * cells * cells * 4


def synthetic_scratched_photo(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[0:side, 0:side] / side
    image = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)])[None] * 0.8
    mask = np.zeros((1, 1, side, side), np.float32)
    for _ in range(8):
        row = int(rng.integers(0, side))
        mask[..., row : row + max(2, side // 128), :] = 1.0
    col = int(rng.integers(0, side - side // 8))
    mask[..., col : col + side // 16] = 1.0
    return torch.from_numpy(image.astype(np.float32)) * (1 - torch.from_numpy(mask)), torch.from_numpy(mask)


def run_case(side: int, naive: bool, out: Path) -> dict:
    """Child process: restore one photo and report time, peak RSS and the result."""
    from stage1_vae import VAE, VAEConfig
    from stage2_mapping import NonLocalMappingConfig, NonLocalMappingNetwork

    torch.manual_seed(0)
    layout = torch.channels_last  # as the pipeline runs them
    vae_a, vae_b = (VAE(VAEConfig()).eval().to(memory_format=layout) for _ in range(2))
    mapping = NonLocalMappingNetwork(NonLocalMappingConfig()).eval().to(memory_format=layout)
    mapping.nonlocal_block.naive = naive
    image, mask = synthetic_scratched_photo(side)
    image = image.contiguous(memory_format=layout)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.no_grad():
        output = vae_b.decode(mapping(vae_a.encode(image), mask))
    seconds = time.perf_counter() - start
    np.save(out, output.numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_bytes": peak, "baseline_bytes": baseline}


def measure(side: int, naive: bool, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(side), "--out", str(out)] + (["--naive"] if naive else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.naive, args.out)))
        return

    gib = available_memory() / GIB
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {gib:.1f} GiB available")
    header = f"{'size':>6} {'impl':>6} {'time s':>9} {'peak GiB':>9} {'base GiB':>9}  note"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sizes:
            results = {}
            for naive in (False, True):
                impl = "naive" if naive else "ours"
                if naive and naive_attention_bytes(side) + 2 * GIB > available_memory():
                    print(
                        f"{side:>6} {impl:>6} {'-':>9} {'-':>9} {'-':>9}  skipped: needs "
                        f"~{naive_attention_bytes(side) / GIB:.0f} GiB for attention alone"
                    )
                    continue
                out = Path(tmp) / f"{side}_{impl}.npy"
                r = measure(side, naive, out)
                if "error" in r:
                    print(f"{side:>6} {impl:>6} {'-':>9} {'-':>9} {'-':>9}  failed: {r['error']}")
                    continue
                results[impl] = (r, out)
                print(
                    f"{side:>6} {impl:>6} {r['seconds']:>9.2f} {r['peak_bytes'] / GIB:>9.2f} "
                    f"{r['baseline_bytes'] / GIB:>9.2f}"
                )
            if len(results) == 2:
                (ours, ours_out), (naive_r, naive_out) = results["ours"], results["naive"]
                diff = float(np.abs(np.load(ours_out) - np.load(naive_out)).max())
                print(
                    f"{side:>6}  ratio: memory ours/naive {ours['peak_bytes'] / naive_r['peak_bytes']:.2f}, "
                    f"time ours/naive {ours['seconds'] / naive_r['seconds']:.2f}, max |diff| {diff:.2e}"
                )


if __name__ == "__main__":
    main()
