"""Old against new, in the same run: the partial non-local block, the instance norm, the head conv.

"Old" is the previous code path (row-chunked attention with explicit ``N x N`` chunks and separate
renormalisation passes, ``torch.var_mean`` instance norm, reflection pad copied before the head
convolution, patch transfer through a full tile matrix); "new" is what the package runs now. Each
case prints the median wall time of both (repeats interleaved, so a loaded machine slows both
alike), their ratio and the largest difference of their outputs. Released layer sizes (512
channels in the mapping, 64 in the VAEs), channels-last as the pipeline runs them, random weights.

    python benchmarks/nonlocal_fused.py                       # 1 and 2 threads, a few minutes
    python benchmarks/nonlocal_fused.py --threads 2 --repeats 5 --latent 96
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core import layers
from stage2_mapping.nonlocal_block import (
    PartialNonLocalBlock,
    partial_attention,
    partial_attention_chunked,
    validity_map,
)
from stage2_mapping.patch_attention import PatchAttention, hole_map, transfer_reference

CHANNELS_LAST = torch.channels_last


def old_instance_norm(x: torch.Tensor) -> torch.Tensor:
    """The previous in-place instance norm (Welford statistics over a strided view)."""
    var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True, correction=0)
    return x.sub_(mean).div_(var.add_(layers.INSTANCE_NORM_EPS).sqrt_())


def old_reflect_conv(conv: nn.Conv2d, x: torch.Tensor, pad: int) -> torch.Tensor:
    """The previous reflection-padded convolution (a padded copy of the input first)."""
    return conv(F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x)


@contextlib.contextmanager
def old_layers() -> Iterator[None]:
    """Residual blocks and VAE layers run with the previous norm and padding while inside."""
    with (
        mock.patch.object(layers, "instance_norm", old_instance_norm),
        mock.patch.object(layers, "reflect_conv", old_reflect_conv),
    ):
        yield


def thin_scratch_mask(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``1 x 1 x H x W`` mask of thin straight scratches at random angles (3-5 % of the pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    mask = np.zeros((height, width), bool)
    for _ in range(max(5, round(5 * max(height, width) / 256))):
        y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0, np.pi)
        distance = np.abs((yy - y0) * np.cos(angle) - (xx - x0) * np.sin(angle))
        mask |= distance < rng.uniform(0.8, 1.8)
    return torch.from_numpy(mask[None, None].astype(np.float32))


def interleaved(
    runs: dict[str, Callable[[], torch.Tensor]],
    repeats: int,
    prepare: Callable[[str], object] | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median wall seconds of each run, the runs taking turns; plus each run's last output.

    ``prepare(name)``, untimed, runs before each timed call (to refill an in-place input).
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            if prepare is not None:
                prepare(name)
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def report(label: str, threads: int, medians: dict[str, float], outputs: dict[str, torch.Tensor]) -> None:
    names = list(medians)
    old, new = names[0], names[-1]
    times = "  ".join(f"{name} {medians[name]:8.4f} s" for name in names)
    ratio = medians[old] / medians[new]
    diff = max_diff(outputs[old], outputs[new])
    print(f"{label:<44} {threads:>2}  {times}  {old}/{new} {ratio:5.2f}  max|diff| {diff:.1e}")


def bench_attention(side: int, threads: int, repeats: int) -> None:
    torch.manual_seed(0)
    block = PartialNonLocalBlock(512).eval().to(memory_format=CHANNELS_LAST)  # fused kernel
    x = torch.randn(1, 512, side, side).contiguous(memory_format=CHANNELS_LAST)
    mask = thin_scratch_mask(4 * side, 4 * side)
    valid = validity_map(mask, (side, side))
    holes, pixels = 1 - float(valid.mean()), float(mask.mean())
    args = (x, valid, block.theta, block.phi, block.g)
    with torch.no_grad():
        medians, outputs = interleaved(
            {"old": lambda: partial_attention_chunked(*args), "new": lambda: partial_attention(*args)},
            repeats,
        )
        report(f"attention {side}x{side} ({pixels:.1%} px, {holes:.1%} cells)", threads, medians, outputs)

        def old_block(mask: torch.Tensor) -> torch.Tensor:
            """The previous forward: no early exit, row-chunked attention, previous norm."""
            valid = validity_map(mask, (side, side))
            with old_layers():
                y = partial_attention_chunked(x, valid, block.theta, block.phi, block.g)
                y = block.blocks(block.project(y))
            return torch.where(valid > 0, x, y)

        no_hole = torch.zeros_like(mask)  # a photo (or a tile of one) without any scratch
        for case, m in (
            (f"whole block {side}x{side} (+ 3 residual blocks)", mask),
            ("  ... no hole", no_hole),
        ):
            medians, outputs = interleaved(
                {"old": lambda m=m: old_block(m), "new": lambda m=m: block(x, m)}, repeats
            )
            report(case, threads, medians, outputs)


def bench_instance_norm(threads: int, repeats: int) -> None:
    for shape in [(1, 64, 512, 512), (1, 512, 128, 128)]:
        for layout, layout_name in [(torch.contiguous_format, "NCHW"), (CHANNELS_LAST, "channels-last")]:
            torch.manual_seed(0)
            base = (torch.randn(shape) * 2 + 0.5).contiguous(memory_format=layout)
            buffers = {name: base.clone() for name in ("old", "torch", "new")}
            runs = {
                "old": lambda b=buffers: old_instance_norm(b["old"]),
                "torch": lambda b=buffers: F.instance_norm(b["torch"], eps=layers.INSTANCE_NORM_EPS),
                "new": lambda b=buffers: layers.instance_norm(b["new"]),
            }
            with torch.no_grad():
                medians, outputs = interleaved(
                    runs, repeats, lambda name, b=buffers, x=base: b[name].copy_(x)
                )
            label = f"instance norm {'x'.join(map(str, shape))} {layout_name}"
            report(label, threads, medians, outputs)
            print(
                f"{'':<44}     F.instance_norm/new {medians['torch'] / medians['new']:5.2f}  "
                f"max|new - F.instance_norm| {max_diff(outputs['new'], outputs['torch']):.1e}"
            )


def bench_head_conv(threads: int, repeats: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 3, 7).to(memory_format=CHANNELS_LAST)
    x = torch.randn(1, 64, 512, 512).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        medians, outputs = interleaved(
            {"old": lambda: old_reflect_conv(conv, x, 3), "new": lambda: layers.reflect_conv(conv, x, 3)},
            repeats,
        )
    report("VAE head conv 64->3 7x7 at 512x512", threads, medians, outputs)


def bench_patch_transfer(side: int, threads: int, repeats: int) -> None:
    torch.manual_seed(0)
    attention = PatchAttention(512, 2).eval()
    x = torch.randn(1, 512, side, side).contiguous(memory_format=CHANNELS_LAST)
    holes = hole_map(thin_scratch_mask(4 * side, 4 * side, seed=1), (side, side))
    scratch = x.clone()
    with torch.no_grad():
        medians, outputs = interleaved(
            {
                "old": lambda: transfer_reference(x, holes, 2),
                "new": lambda: attention.transfer(scratch, holes, inplace=True),
            },
            repeats,
            lambda name: scratch.copy_(x),
        )
    report(f"patch transfer p=2 {side}x{side}", threads, medians, outputs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats of the attention cases (median reported)"
    )
    parser.add_argument("--latent", type=int, default=64, help="latent side of the attention cases")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.repeats} interleaved repeats"
    )
    print(f"{'case':<44} {'th':>2}  median wall times, ratio old/new, largest output difference")
    for threads in args.threads:
        torch.set_num_threads(threads)
        quick = max(args.repeats, 7)  # the sub-second cases
        bench_instance_norm(threads, quick)
        bench_head_conv(threads, quick)
        bench_patch_transfer(2 * args.latent, threads, quick)
        bench_attention(args.latent, threads, args.repeats)


if __name__ == "__main__":
    main()
