"""The memory planner's estimate against the measured peak of one global-restoration pass.

    python benchmarks/planner_memory.py [--size 1024x768] [--threads 1]

For the built-in weights and for weights converted from rule-generated released checkpoints, each
in a fresh subprocess: load the pipeline, warm the kernels up on a small image, then reset the
kernel's peak-RSS counter (``/proc/self/clear_refs``) and run the global stage's network pass
(``RestorationPipeline.global_forward``) on a ``--size`` photo. The peak RSS increase over the
resident set just before the pass is what :func:`latent_restore.planning.estimate_global_bytes`
estimates (activations only; tracemalloc would not see torch's allocations). Prints both and their
ratio per weights set and mode; exits 1 if any ratio is outside 0.75-1.25.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

try:
    from _weights import write_rule_official_weights
except ImportError:  # run as a module
    from benchmarks._weights import write_rule_official_weights

from latent_restore.pipeline import Mode, RestorationPipeline

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = REPO / "latent_restore" / "default_weights"
TOLERANCE = 0.25
MODES = {mode.value: mode.global_components() for mode in (Mode.QUALITY, Mode.SCRATCH)}
"""The measured modes' ``(mapping, decoder)``, as the pipeline resolves them."""


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    """Make ``VmHWM`` start again from the current RSS (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def _measure(weights: Path, mode: str, height: int, width: int) -> dict[str, float]:
    """In this process: the planner's estimate and the measured peak increase of one pass, in bytes."""
    pipeline = RestorationPipeline.from_pretrained(weights, device="cpu", faces=False)
    mapping, decoder = MODES[mode]
    shape = pipeline.network_shape(mapping)
    generator = torch.Generator().manual_seed(0)
    mask = None if mode == "quality" else torch.zeros(1, 1, height, width)
    small_mask = None if mask is None else mask[..., :64, :64]
    pipeline.global_forward(
        mapping, decoder, torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1, small_mask
    )
    x = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
    if mask is not None:
        mask[..., height // 3 : height // 3 + 8, :] = 1.0
    before = _status_kib("VmRSS")
    _reset_peak()
    out = pipeline.global_forward(mapping, decoder, x, mask)
    peak = _status_kib("VmHWM")
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    return {"estimate": float(shape.estimate(height, width)), "measured": float((peak - before) * 1024)}


def _child(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    height, width = args.height, args.width
    print(json.dumps(_measure(Path(args.child), args.mode, height, width)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the photo (default 1024x768)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--modes", nargs="+", default=["quality", "scratch"], choices=sorted(MODES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    if args.child:
        return _child(args)

    bad = 0
    with tempfile.TemporaryDirectory(prefix="planner_memory_") as tmp:
        sets = {"built-in": BUILT_IN, "official (rule-generated)": write_rule_official_weights(Path(tmp))}
        print(f"{'weights':28} {'mode':8} {'estimate':>10} {'measured':>10} {'ratio':>6}  ({args.size})")
        for label, weights in sets.items():
            for mode in args.modes:
                if not (weights / MODES[mode][0].value / "config.json").is_file():
                    print(f"{label:28} {mode:8} {'(no ' + MODES[mode][0].value + ')':>28}")
                    continue
                command = [sys.executable, __file__, "--child", str(weights), "--mode", mode]
                command += ["--size", args.size, "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 2
                result = json.loads(done.stdout.strip().splitlines()[-1])
                ratio = result["estimate"] / result["measured"]
                ok = abs(ratio - 1.0) <= TOLERANCE
                bad += not ok
                estimate, measured = result["estimate"] / 2**20, result["measured"] / 2**20
                print(
                    f"{label:28} {mode:8} {estimate:8.0f} MiB {measured:6.0f} MiB"
                    f" {ratio:6.2f}{'' if ok else '  OUTSIDE 25 %'}"
                )
    return 1 if bad else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
