"""Scratched photos at real sizes: time and peak memory of whole-photo vs windowed attention, in one run.

    python benchmarks/scratch_speed.py [--weights DIR] [--sizes 512x512 1024x1024 2048x1536 4000x3000]
        [--baseline CHECKOUT] [--folder ../shared/data/real_old] [--threads 2] [--memory-limit GIB]

For each size it restores one synthetic photo with a realistic thin-scratch mask (about 4 % of the
pixels: a few long thin scratches and dust) in several ways, each in a fresh process so that peak
memory (``ru_maxrss``) is that path's own:

* ``quality``: quality mode (no mask), the reference time;
* ``tiled``: scratch mode with the time-aware plan (the default: attention within windows);
* ``global``: scratch mode attending over the whole photo (``--scratch-context global``, the
  released behaviour);
* with ``--baseline`` (a checkout of an earlier commit, e.g. a ``git worktree``): ``quality@base``
  and ``scratch@base``, the same photo through that checkout's code, so old and new are timed in
  the same run on the same machine.

It prints time, peak memory, the ratio of each path to quality mode, the speed-ups and the largest
difference between outputs. With ``--folder`` it also times a folder run with and without the I/O
threads and checks their outputs are byte-identical. ``--weights`` defaults to the ones
``latent-restore run`` uses; ``--full-size`` writes the released architectures with seeded random
values instead (timings only); ``--memory-limit`` gives every path the same memory budget (the
planner tiles what does not fit). Cases whose components are missing are reported and skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def scratch_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Thin scratches (1-3 px wide, long, slightly curved) and dust: about 3-5 % of the pixels."""
    import cv2

    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    target = 0.04 * height * width
    while mask.sum() / 255 < target:
        if rng.random() < 0.8:
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(0.3, 1.0) * max(height, width)
            bend = rng.normal(0, 0.05 * length)
            t = np.linspace(-0.5, 0.5, 64)
            xs = x0 + np.cos(angle) * t * length - np.sin(angle) * bend * (1 - 4 * t**2)
            ys = y0 + np.sin(angle) * t * length + np.cos(angle) * bend * (1 - 4 * t**2)
            points = np.stack([xs, ys], 1).round().astype(np.int32)
            cv2.polylines(mask, [points], False, 255, int(rng.integers(1, 4)))
        else:
            cv2.circle(
                mask,
                (int(rng.uniform(0, width)), int(rng.uniform(0, height))),
                int(rng.integers(1, 4)),
                255,
                -1,
            )
    return mask > 0


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth photo-like test image with texture (float RGB in [0, 1])."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
    base = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 0.03, (height, width, 1)).astype(np.float32)
    return np.clip(base + grain, 0, 1)


def _use_checkout(checkout: str) -> None:
    """Import the package from ``checkout`` instead of the installed (possibly editable) one."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, str(Path(checkout).resolve()))


def one_case(args: argparse.Namespace) -> None:
    """Child process: restore one case and print its JSON record."""
    if args.one_checkout:
        _use_checkout(args.one_checkout)
    import torch

    from latent_restore.pipeline import RestorationPipeline

    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.one_size.split("x"))
    limit = None if args.memory_limit is None else int(args.memory_limit * 2**30)
    pipeline = RestorationPipeline.from_pretrained(
        args.weights, device="cpu", faces=False, memory_limit=limit
    )
    rgb = photo(height, width)
    mask = None if args.one_path.startswith("quality") else scratch_mask(height, width)
    if args.one_checkout:  # an earlier API: no scratch context, whole-photo attention
        start = time.perf_counter()
        out, path = pipeline.restore_global(rgb, mask, False)
    else:
        from latent_restore.pipeline import ScratchContext

        context = ScratchContext.GLOBAL if args.one_path == "global" else ScratchContext.TILED
        start = time.perf_counter()
        out, path = pipeline.restore_global(rgb, mask, False, context)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.save:
        np.save(args.save, (out * 255).round().astype(np.uint8))
    print(json.dumps({"seconds": seconds, "peak": peak, "path": path}))


def run_child(
    script: Path,
    weights: str | None,
    size: str,
    path: str,
    threads: int,
    save: Path,
    checkout: str | None,
    memory_limit: float | None,
) -> dict | None:
    cmd = [sys.executable, str(script), "--one-size", size, "--one-path", path, "--threads", str(threads)]
    cmd += [] if memory_limit is None else ["--memory-limit", str(memory_limit)]
    cmd += ["--save", str(save)] + (["--weights", weights] if weights else [])
    cmd += ["--one-checkout", checkout] if checkout and path.endswith("@base") else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        print(f"  {size} {path}: failed: {reason}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_throughput(weights: str | None, folder: Path, threads: int) -> None:
    import torch

    from latent_restore.batch import run_batch
    from latent_restore.pipeline import RestorationOptions, RestorationPipeline

    torch.set_num_threads(threads)
    pipeline = RestorationPipeline.from_pretrained(weights, device="cpu", faces=False)
    times, digests = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for io_threads in (False, True, False, True):
            out = Path(tmp) / f"out_{io_threads}"
            start = time.perf_counter()
            summary = run_batch(
                pipeline,
                folder,
                out,
                RestorationOptions(faces=False),
                overwrite=True,
                show_progress=False,
                io_threads=io_threads,
            )
            times.setdefault(io_threads, []).append(time.perf_counter() - start)
            digests[io_threads] = {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.png")
            }
    without, with_ = min(times[False]), min(times[True])
    print(
        f"folder {folder} ({len(summary.restored)} photos): without I/O threads {without:.1f} s, with "
        f"{with_:.1f} s, speed-up {without / with_:.2f}x, same outputs: {digests[False] == digests[True]}"
    )


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights")
    p.add_argument("--sizes", nargs="*", default=["512x512", "1024x1024", "2048x1536", "4000x3000"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--folder", type=Path)
    p.add_argument(
        "--skip-global-above", type=int, default=1 << 22, help="pixels; global attention beyond is not run"
    )
    p.add_argument("--baseline", help="checkout of an earlier commit to time in the same run")
    p.add_argument(
        "--skip-base-above", type=int, default=1 << 40, help="pixels; the baseline is not run beyond"
    )
    p.add_argument("--full-size", action="store_true", help="released sizes, seeded random values")
    p.add_argument("--paths", nargs="+", help="only these paths (quality, tiled, global, quality@base, ...)")
    p.add_argument("--memory-limit", type=float, help="GiB every path may use (default: 1.5 on a CPU)")
    p.add_argument("--one-size", help=argparse.SUPPRESS)
    p.add_argument("--one-checkout", help=argparse.SUPPRESS)
    p.add_argument("--one-path", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_size:
        one_case(args)
        return 0
    limit = "the default (1.5 GiB on a CPU)" if args.memory_limit is None else f"{args.memory_limit:g} GiB"
    print(f"{date.today()} {cpu_name()}, {args.threads} threads, memory budget {limit}")
    script = Path(__file__).resolve()
    paths = ["quality", "tiled", "global"] + (["quality@base", "scratch@base"] if args.baseline else [])
    paths = [p for p in paths if args.paths is None or p in args.paths]
    print("size        path          time (s)  peak (GiB)  vs quality")
    with tempfile.TemporaryDirectory() as tmp:
        if args.full_size:
            sys.path.insert(0, str(script.parent))
            from _weights import write_full_size_weights

            args.weights = str(write_full_size_weights(Path(tmp) / "weights"))
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            records = {}
            for path in paths:
                if path == "global" and h * w > args.skip_global_above:
                    print(f"{size:11} {path:12}  skipped (above --skip-global-above)")
                    continue
                if path.endswith("@base") and h * w > args.skip_base_above:
                    print(f"{size:11} {path:12}  skipped (above --skip-base-above)")
                    continue
                record = run_child(
                    script,
                    args.weights,
                    size,
                    path,
                    args.threads,
                    Path(tmp) / f"{size}_{path}.npy",
                    args.baseline,
                    args.memory_limit,
                )
                if record is None:
                    continue
                records[path] = record
                ratio = (
                    record["seconds"] / records["quality"]["seconds"]
                    if "quality" in records
                    else float("nan")
                )
                print(
                    f"{size:11} {path:12} {record['seconds']:9.1f}  {record['peak'] / 2**30:10.2f}  "
                    f"{ratio:9.2f}x  ({record['path']})"
                )
            pairs = (
                ("tiled", "global"),
                ("tiled", "scratch@base"),
                ("global", "scratch@base"),
                ("quality", "quality@base"),
            )
            for new, old in pairs:
                if {new, old} <= records.keys():
                    a = np.load(Path(tmp) / f"{size}_{new}.npy").astype(np.int16)
                    b = np.load(Path(tmp) / f"{size}_{old}.npy").astype(np.int16)
                    mse = float(((a - b) ** 2).mean())
                    psnr = 10 * np.log10(255**2 / mse) if mse else float("inf")
                    speedup = records[old]["seconds"] / records[new]["seconds"]
                    print(
                        f"{size:11} {new} vs {old}: {speedup:.2f}x faster, "
                        f"max |diff| {int(np.abs(a - b).max())} levels, PSNR {psnr:.1f} dB"
                    )
    if args.folder is not None:
        folder_throughput(args.weights, args.folder, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
