"""How the global stage is computed: in one piece or in tiles, and how far scratch mode attends.

Memory decides the pieces: :func:`estimate_global_bytes`, from the sizes the loaded networks'
configs report (:class:`NetworkShape`), must fit the budget, else the photo goes in overlapping
tiles. Time decides the attention: the partial non-local block of scratch mode, attending over a
whole piece, grows with the square of its cells, so under ``tiled`` context the block attends
within windows (:func:`attention_window`) as wide as keeps the modelled work of the scratch path
within :data:`SCRATCH_TIME_RATIO` times that of quality mode. The convolutions still run over the
whole piece once, so the windows cost no repeated overlap. :data:`BYTES_PER_PIXEL` bounds what the
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
SCRATCH_TIME_RATIO = 1.45
"""Modelled work of scratch mode that the attention window keeps within, as a multiple of quality
mode's on the same photo. Aimed a little below the 1.5x we promise: the windowed attention runs at
about 80 % of the convolutions' throughput on the CPU (55 against 69 GMAC/s measured at 1024² with
the released widths), which the model, counting multiply-adds alone, does not see."""
MIN_WINDOW_PIXELS = 64
"""Narrowest attention window (photo pixels), below which the time ratio gives way: its query
blocks of half of it see at least a quarter of it (16 px) of context on every side, about what a
scratch mapping trained on 64 px crops ever attended over, and enough for the thin scratches and
specks the detector marks."""
MIN_TILE = 256
"""Smallest tile side (pixels) the memory plan cuts a photo into."""
PROBE_SIDE = 64
"""Side of the probe image whose convolution work (counted by hooks) gives each path's cost per pixel."""


BYTES_PER_PIXEL = 96
"""What the whole-photo arrays of one restoration cost per pixel (float32 input, tensor, padded
copy, blended tile accumulator, output, tone-mapped copy, quantised and encoded results), on top of
the tile working set the memory planner bounds; measured peak on a 12 MP photo: see README."""


CPU_GLOBAL_BUDGET = 3 << 29
"""Bytes the global stage takes on a CPU unless told otherwise (1.5 GiB). On a CPU a tile costs
only its overlap, 3-7 % more work for a 12 MP photo at the released widths, where one piece of a
12 MP scratched scan needs about 11 GB; bounded, any photo restores in under 3 GB (measured: README,
Performance) beside whatever else the machine runs. A GPU's memory is its own and one piece is
faster there, so on a GPU the plan takes what is free."""


def default_memory_budget(device: torch.device | None = None) -> int:
    """Bytes the global stage may use when no limit is given: 80 % of the free memory, on a CPU at
    most :data:`CPU_GLOBAL_BUDGET`."""
    device = device or torch.device("cpu")
    free = int(available_memory(device) * 0.8)
    return min(free, CPU_GLOBAL_BUDGET) if device.type == "cpu" else free


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


@dataclass(frozen=True)
class ConvWork:
    """Convolution work of a path, per photo pixel, counted by hooks on a probe.

    Attributes:
        total: multiply-accumulates of every convolution of the path.
        attention: those of the attention block's own convolutions (its projection and residual
            blocks), which quality mode does not have.
    """

    total: float
    attention: float = 0.0


@dataclass(frozen=True)
class GlobalPlan:
    """How the global stage runs.

    Attributes:
        path: what the log and the results call it.
        tile: ``(height, width)`` of the tiles in pixels, or ``None`` for one piece.
        overlap: overlap of the tiles (pixels).
        window: attention window in latent cells (see
            :func:`stage2_mapping.nonlocal_block.partial_attention`), or ``None`` for attention
            over the whole piece.
    """

    path: str
    tile: tuple[int, int] | None = None
    overlap: int = 0
    window: int | None = None


def attention_work(cells: int, window_cells: int, latent_width: int) -> float:
    """Modelled multiply-accumulates of the attention over ``cells`` queries each seeing
    ``window_cells`` keys: ``2 C`` per query-key pair, plus the three ``C x C`` projections."""
    return 2.0 * latent_width * cells * window_cells + 3.0 * latent_width**2 * cells


def attention_window(
    height: int, width: int, shape: NetworkShape, work: ConvWork, ratio: float = SCRATCH_TIME_RATIO
) -> int | None:
    """The attention window (latent cells) for an ``height x width`` piece, or ``None`` for all of it.

    The widest window whose modelled attention keeps ``work.total`` plus the attention within
    ``ratio`` times quality mode's convolutions (``work.total - work.attention``), never narrower
    than :data:`MIN_WINDOW_PIXELS`; ``None`` when that window spans the piece anyway.
    """
    m = shape.multiple
    rows, cols = math.ceil(height / m), math.ceil(width / m)
    per_cell = (ratio * (work.total - work.attention) - work.total) * m * m - 3.0 * shape.latent_width**2
    side = math.isqrt(max(0, int(per_cell / (2.0 * shape.latent_width))))
    side = max(side, math.ceil(MIN_WINDOW_PIXELS / m)) // 2 * 2
    return None if side >= max(rows, cols) else side


def memory_tiles(height: int, width: int, shape: NetworkShape, budget: int) -> tuple[int, int]:
    """The tile size ``(h, w)`` whose tiles fit ``budget`` and cover the photo with the least work.

    Every split into ``rows x cols`` tiles overlapping by :data:`TILE_OVERLAP` is tried, tiles as
    small as the split allows (rounded up to the encoder's multiple, never below
    :data:`MIN_TILE`); of those that fit, the one of least total tiled area, then of fewest tiles.
    Rectangular tiles waste less than squares: under 2 GiB at the released widths a 2048x1536 photo
    goes in two tiles 1056 wide and 1536 high, where 1024 px squares would compute six, twice the
    photo.

    Raises:
        MemoryError: not even a :data:`MIN_TILE` square fits ``budget``.
    """
    m = shape.multiple

    def sides(length: int) -> list[tuple[int, int]]:
        out, count = [], 1
        while True:
            raw = -(-(length + (count - 1) * TILE_OVERLAP) // count)  # count tiles, as small as can be
            side = min(length, -(-max(MIN_TILE, raw) // m) * m)
            pieces = len(tile_starts(length, side, TILE_OVERLAP))
            if out and pieces == out[-1][1]:
                out.pop()  # as many tiles, smaller: keep the smaller
            out.append((side, pieces))
            if raw <= MIN_TILE:
                return out
            count += 1

    best: tuple[int, int, int, int] | None = None
    for tile_h, rows in sides(height):
        for tile_w, cols in sides(width):
            if shape.estimate(tile_h, tile_w) > budget:
                continue
            candidate = (rows * cols * tile_h * tile_w, rows * cols, tile_h, tile_w)
            best = candidate if best is None else min(best, candidate)
    if best is None:
        side = min(MIN_TILE, height), min(MIN_TILE, width)
        raise MemoryError(
            f"not even a {side[1]}x{side[0]} tile fits in the {budget / 2**30:.1f} GiB available"
        )
    return best[2], best[3]


def plan_global(
    height: int,
    width: int,
    shape: NetworkShape,
    budget: int,
    conv_work: Callable[[], ConvWork],
    context: ScratchContext = ScratchContext.TILED,
    whole_path: str = "full",
) -> GlobalPlan:
    """Choose how to compute the global stage: in one piece or tiles, and the attention window.

    Memory: one piece if the estimate of :func:`estimate_global_bytes` fits ``budget``, else the
    tiles of :func:`memory_tiles`, overlapping by :data:`TILE_OVERLAP`. Time, for the partial non-local
    block under ``tiled`` context: the window of :func:`attention_window` for each piece.

    Args:
        height, width: the photo's size.
        shape: the networks' sizes.
        budget: bytes the pass may use.
        conv_work: the path's convolution work per pixel; called only when a window is chosen (it
            may run a probe forward).
        context: ``tiled`` bounds the attention's time, ``global`` attends over every piece whole.
        whole_path: the path's name when the photo goes in one piece.

    Raises:
        MemoryError: not even the smallest tile fits ``budget``.
    """
    tile, overlap = None, 0
    if shape.estimate(height, width) > budget:
        tile, overlap = memory_tiles(height, width, shape, budget), TILE_OVERLAP
    path = whole_path if tile is None else f"tiles {tile[1]}x{tile[0]}"
    window = None
    if shape.attention and context is ScratchContext.TILED:
        piece_h, piece_w = (height, width) if tile is None else tile
        work = conv_work()
        window = attention_window(piece_h, piece_w, shape, work)
        if window is not None:
            m = shape.multiple
            cells = math.ceil(piece_h / m) * math.ceil(piece_w / m)
            convs = work.total * piece_h * piece_w
            quality = (work.total - work.attention) * piece_h * piece_w
            windowed = convs + attention_work(cells, window * window, shape.latent_width)
            whole = convs + attention_work(cells, cells, shape.latent_width)
            logger.info(
                "scratch context: attention within %d px windows, modelled %.2fx quality mode's work "
                "(whole-%s attention %.2fx; --scratch-context global keeps it)",
                window * m,
                windowed / quality,
                "photo" if tile is None else "tile",
                whole / quality,
            )
            path += f", attention windows {window * m} px"
    return GlobalPlan(path, tile, overlap, window)
