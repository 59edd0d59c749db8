"""How the global stage is computed: in one piece or in tiles, and of what side.

Memory first: :func:`estimate_global_bytes`, from the sizes the loaded networks' configs report
(:class:`NetworkShape`), must fit the budget. Then time, for the partial non-local block of scratch
mode under ``tiled`` context: whole-photo attention grows with the square of the pixel count, so
the plan models the work of every way of cutting the photo (each tile's convolutions, counted on a
probe, plus its attention) and takes the cheapest. :data:`BYTES_PER_PIXEL` bounds what the
whole-photo arrays cost on top, which sets the largest photo a run accepts by default.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from latent_restore.core.memory import available_memory
from latent_restore.core.tiling import tile_starts
from latent_restore.options import ScratchContext

logger = logging.getLogger(__name__)

TILE_OVERLAP = 64
"""Overlap (pixels) of the tiles the memory plan cuts a photo into: wide enough that the blended
seams match the one-piece result closely."""
CONTEXT_OVERLAP = 32
"""Overlap of the tiles the time plan cuts a scratched photo into. Attention within a tile differs
from whole-photo attention anyway (it sees less context), so a wider overlap would buy little
fidelity to it while every tile pays for its overlap again: with 32 px instead of 64 the modelled
scratch/quality work falls from 2.1-2.3x to 1.84-1.93x between 1 and 12 MP at the released widths
(of which 1.41x is the non-local block's own residual convolutions)."""
MIN_CONTEXT_TILE = 256
"""Smallest tile side (pixels) the time plan cuts a scratched photo into: below it the attention
would see too little undamaged context to fill a scratch from."""
PROBE_SIDE = 64
"""Side of the probe image whose convolution work (counted by hooks) gives each path's cost per pixel."""


BYTES_PER_PIXEL = 96
"""What the whole-photo arrays of one restoration cost per pixel (float32 input, tensor, padded
copy, blended tile accumulator, output, tone-mapped copy, quantised and encoded results), on top of
the tile working set the memory planner bounds; measured peak on a 12 MP photo: see README."""


def default_max_pixels(device: torch.device | None = None) -> int:
    """The largest photo (in pixels) a run accepts by default: half the free memory at ``BYTES_PER_PIXEL``.

    A larger photo is refused from its header, before decoding, instead of driving the machine
    into swap; ``--max-pixels`` overrides it.
    """
    return max(1 << 20, int(available_memory(device or torch.device("cpu")) * 0.5) // BYTES_PER_PIXEL)


def estimate_global_bytes(
    height: int,
    width: int,
    latent_width: int,
    attention: bool,
    multiple: int = 4,
    image_width: int = 64,
) -> int:
    """Peak memory of one global-restoration pass (activations only), from the networks' sizes.

    The networks run one after the other and free what they no longer need, so the peak is that of
    the costliest resolution, not a sum over all: at full resolution a convolution's input and
    output (2 maps of ``image_width`` channels); in the latent (``1 / multiple`` of the sides) the
    mapping's residual blocks with their skips (5 maps of ``latent_width`` channels, 6 with the
    non-local block's keys and values). The encoder's latent and the input and output images stay
    alive throughout. A 5 % margin covers the allocator. Measured by ``benchmarks/planner_memory.py``
    on a 1024x768 photo, the estimate is 1.1-1.15 times the peak RSS increase for the built-in and
    the released architectures (the sum it replaced was 1.7-3.6 times it).
    """
    pixels = height * width
    cells = math.ceil(height / multiple) * math.ceil(width / multiple)
    full_resolution = 2 * image_width * 4 * pixels
    latent = (6 if attention else 5) * latent_width * 4 * cells
    retained = latent_width * 4 * cells + 2 * 3 * 4 * pixels
    return int((max(full_resolution, latent) + retained) * 1.05)


@dataclass(frozen=True)
class NetworkShape:
    """What the planner needs of the global stage's networks, asked of their configs.

    Attributes:
        latent_width: channels of the mapping's widest latent features.
        multiple: the encoder's side multiple (``2 ** num_downsamples``).
        image_width: channels of the encoder's full-resolution features.
        attention: whether the mapping attends over the whole latent (the partial non-local block).
    """

    latent_width: int
    multiple: int
    image_width: int
    attention: bool

    def estimate(self, height: int, width: int) -> int:
        """:func:`estimate_global_bytes` of an ``height x width`` piece."""
        return estimate_global_bytes(
            height, width, self.latent_width, self.attention, self.multiple, self.image_width
        )


def count_conv_macs(modules: Sequence[nn.Module], run: Callable[[], object]) -> int:
    """Multiply-accumulates of every convolution in ``modules`` during ``run()``, counted by hooks."""
    count = [0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # Conv2d: every output value sums Cin/g * kh * kw products (weight[0]); a transposed
        # convolution spreads every input value over Cout/g * kh * kw outputs (its weight[0]).
        spread = inputs[0] if isinstance(module, nn.ConvTranspose2d) else output
        count[0] += spread.numel() * module.weight[0].numel()

    handles = [
        m.register_forward_hook(hook)
        for net in modules
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return count[0]


def tiled_work(
    height: int, width: int, tile: int, overlap: int, macs_per_pixel: float, shape: NetworkShape
) -> float:
    """Modelled multiply-accumulates of the global stage in ``tile``-sided tiles (one if it covers
    the photo): every tile's convolutions plus, with attention, its ``2 C N^2`` for ``N`` cells."""
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    piece_h, piece_w = min(tile, height), min(tile, width)
    work = macs_per_pixel * piece_h * piece_w
    if shape.attention:
        cells = math.ceil(piece_h / shape.multiple) * math.ceil(piece_w / shape.multiple)
        work += 2 * shape.latent_width * cells**2
    return len(rows) * len(cols) * work


def plan_global(
    height: int,
    width: int,
    shape: NetworkShape,
    budget: int,
    macs_per_pixel: Callable[[], float],
    context: ScratchContext = ScratchContext.TILED,
    whole_path: str = "full",
) -> tuple[str, int | None, int]:
    """Choose how to compute the global stage: in one piece, or tiles of what side.

    Memory first: the estimate of :func:`estimate_global_bytes` must fit ``budget``. Then time,
    for the partial non-local block under ``tiled`` context: of one piece and every tile side from
    :data:`MIN_CONTEXT_TILE` up whose tiles fit ``budget``, the one of least :func:`tiled_work`.

    Args:
        height, width: the photo's size.
        shape: the networks' sizes.
        budget: bytes the pass may use.
        macs_per_pixel: the convolutions' work per photo pixel; called only when the time plan
            applies (it may run a probe forward).
        context: ``tiled`` bounds the attention's time, ``global`` only its memory.
        whole_path: the path's name when the photo goes in one piece.

    Returns:
        ``(path, tile, overlap)``: ``(whole_path, None, 0)``, or ``("tiles SxS", S, overlap)``.

    Raises:
        MemoryError: not even the smallest tile fits ``budget``.
    """
    estimate = shape.estimate
    fits_whole = estimate(height, width) <= budget
    if shape.attention and context is ScratchContext.TILED and max(height, width) > MIN_CONTEXT_TILE:
        per_pixel = macs_per_pixel()
        whole = tiled_work(height, width, max(height, width), 0, per_pixel, shape)
        sides = range(MIN_CONTEXT_TILE, max(height, width), shape.multiple)
        works = [
            (tiled_work(height, width, side, CONTEXT_OVERLAP, per_pixel, shape), side)
            for side in sides
            if estimate(side, side) <= budget
        ]
        work, side = min(works, default=(math.inf, 0))
        if work < whole or (not fits_whole and works):
            logger.info(
                "scratch context: whole-photo attention would cost %.0f GMAC, %d px tiles %.0f GMAC "
                "(%.2fx the %.0f GMAC of the convolutions alone); tiling (--scratch-context global "
                "keeps it whole)",
                whole / 1e9,
                side,
                work / 1e9,
                work / (per_pixel * height * width),
                per_pixel * height * width / 1e9,
            )
            return f"tiles {side}x{side}", side, CONTEXT_OVERLAP
    if fits_whole:
        return whole_path, None, 0
    tile = 2048
    while tile > MIN_CONTEXT_TILE and estimate(tile, tile) > budget:
        tile = max(MIN_CONTEXT_TILE, tile // 2 // shape.multiple * shape.multiple)
    if estimate(tile, tile) > budget:
        raise MemoryError(f"not even a {tile}x{tile} tile fits in the {budget / 2**30:.1f} GiB available")
    return f"tiles {tile}x{tile}", tile, TILE_OVERLAP
