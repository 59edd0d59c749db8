"""How the global stage is computed: in one piece or in tiles, and of what side.

Memory first: :func:`estimate_global_bytes`, from the sizes the loaded networks' configs report
(:class:`NetworkShape`), must fit the budget. Then time, for the partial non-local block of scratch
mode under ``tiled`` context: whole-photo attention grows with the square of the pixel count, so
the photo is cut into tiles whose attention costs at most :data:`ATTENTION_SHARE` of the
convolutions' work. :data:`BYTES_PER_PIXEL` bounds what the whole-photo arrays cost on top, which
sets the largest photo a run accepts by default.
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
ATTENTION_SHARE = 0.4
"""With ``scratch_context=tiled``, the partial non-local block may cost at most this fraction of
the convolutions' work: with detection and tile overlaps a scratched photo then costs about 1.5x
its quality-mode time, whatever its size (whole-photo attention grows with the square of the
pixel count)."""
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


def plan_global(
    height: int,
    width: int,
    shape: NetworkShape,
    budget: int,
    macs_per_pixel: Callable[[], float],
    context: ScratchContext = ScratchContext.TILED,
    whole_path: str = "full",
) -> tuple[str, int | None]:
    """Choose how to compute the global stage: in one piece, or tiles of what side.

    Memory first: the estimate of :func:`estimate_global_bytes` must fit ``budget``. Then time,
    for the partial non-local block under ``tiled`` context: its work (``2 C N^2`` for ``N``
    latent cells attended together) may be at most :data:`ATTENTION_SHARE` of the
    convolutions' work, which bounds the tile side at ``m^2 sqrt(share * macs_per_pixel / 2C)``.

    Args:
        height, width: the photo's size.
        shape: the networks' sizes.
        budget: bytes the pass may use.
        macs_per_pixel: the convolutions' work per photo pixel; called only when the time bound
            applies (it may run a probe forward).
        context: ``tiled`` bounds the attention's time, ``global`` only its memory.
        whole_path: the path's name when the photo goes in one piece.

    Returns:
        ``(path, tile)``: ``(whole_path, None)``, or ``("tiles SxS", S)``.

    Raises:
        MemoryError: not even the smallest tile fits ``budget``.
    """
    latent_width, multiple, attention = shape.latent_width, shape.multiple, shape.attention
    estimate = shape.estimate
    time_tile = None
    if attention and context is ScratchContext.TILED:
        macs_per_pixel_value = macs_per_pixel()
        cells = math.ceil(height / multiple) * math.ceil(width / multiple)
        attention_macs = 2 * latent_width * cells**2
        conv_macs = macs_per_pixel_value * height * width
        if attention_macs > ATTENTION_SHARE * conv_macs:
            side = multiple**2 * math.sqrt(ATTENTION_SHARE * macs_per_pixel_value / (2 * latent_width))
            time_tile = max(MIN_CONTEXT_TILE, int(side) // multiple * multiple)
            # Tiles pay their overlaps twice and at least MIN_CONTEXT_TILE each: on a photo
            # only a little larger than a tile, one piece can still be cheaper.
            tiles = len(tile_starts(height, time_tile, TILE_OVERLAP)) * len(
                tile_starts(width, time_tile, TILE_OVERLAP)
            )
            tile_cells = (time_tile // multiple) ** 2
            tiled_macs = tiles * (2 * latent_width * tile_cells**2 + macs_per_pixel_value * time_tile**2)
            if tiled_macs >= attention_macs + conv_macs:
                time_tile = None
    if estimate(height, width) <= budget and (time_tile is None or max(height, width) <= time_tile):
        return whole_path, None
    tile = time_tile if time_tile is not None else 2048
    while tile > MIN_CONTEXT_TILE and estimate(tile, tile) > budget:
        tile = max(MIN_CONTEXT_TILE, tile // 2 // multiple * multiple)
    if time_tile is not None:
        logger.info(
            "scratch context: whole-photo attention would cost %.1f GMAC against %.1f GMAC of "
            "convolutions; attending within %d px tiles instead (--scratch-context global keeps it)",
            attention_macs / 1e9,
            conv_macs / 1e9,
            tile,
        )
    if estimate(tile, tile) > budget:
        raise MemoryError(f"not even a {tile}x{tile} tile fits in the {budget / 2**30:.1f} GiB available")
    return f"tiles {tile}x{tile}", tile
