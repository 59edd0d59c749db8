"""The partial non-local attention (fused, chunked, full matrix) and the patch attention, against formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stage2_mapping import nonlocal_block
from stage2_mapping.hole_fusion import HoleFusion
from stage2_mapping.nonlocal_block import (
    AttentionKernel,
    PartialNonLocalBlock,
    attend_in_windows,
    fused_kernel_available,
    partial_attention,
    partial_attention_chunked,
    partial_attention_naive,
    validity_map,
    windowed_attention_blocks,
)
from stage2_mapping.patch_attention import PatchAttention, hole_map, match_patches, transfer_reference


def _block(channels: int = 6) -> PartialNonLocalBlock:
    torch.manual_seed(1)
    block = PartialNonLocalBlock(channels, num_res_blocks=1).eval()
    with torch.no_grad():
        for conv in (block.theta, block.phi):
            conv.weight.mul_(3.0)  # peaky attention, as in the released model
    return block


def _valid(kind: str, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """A ``1 x 1 x h x w`` validity map of one of the shapes a real mask takes."""
    if kind == "dense":  # most cells are holes
        return (torch.rand(1, 1, h, w, generator=generator) > 0.7).float()
    if kind == "thin":  # a scratch line across and one down
        valid = torch.ones(1, 1, h, w)
        valid[..., h // 2, :] = 0.0
        valid[..., :, w // 3] = 0.0
        return valid
    if kind == "empty":  # no hole at all
        return torch.ones(1, 1, h, w)
    if kind == "all_masked":
        return torch.zeros(1, 1, h, w)
    if kind == "one_valid":
        valid = torch.zeros(1, 1, h, w)
        valid[..., h - 2, w - 1] = 1.0
        return valid
    raise ValueError(kind)


MASK_KINDS = ["dense", "thin", "empty", "all_masked", "one_valid"]


@pytest.mark.parametrize("size", [(7, 11), (13, 5)])
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_attention_equals_full_matrix(size: tuple[int, int], kind: str, layout) -> None:
    block = _block()
    generator = torch.Generator().manual_seed(sum(size) + len(kind))
    h, w = size
    x = torch.randn(2, 6, h, w, generator=generator).contiguous(memory_format=layout)
    # The second photo always has a random mask, so one batch mixes two kinds.
    valid = torch.cat([_valid(kind, h, w, generator), _valid("dense", h, w, generator)])
    with torch.no_grad():
        ref = partial_attention_naive(x, valid, block.theta, block.phi, block.g)
        for chunk_bytes in (None, 1, 1000):  # automatic, one query row per chunk, a few rows
            ours = partial_attention(x, valid, block.theta, block.phi, block.g, max_chunk_bytes=chunk_bytes)
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    if kind == "all_masked":
        assert torch.equal(ours[0], torch.zeros_like(ours[0]))
    if kind == "one_valid":  # every row is g at that cell, scaled down where its mass vanishes
        g_cell = block.g(x)[0, :, h - 2, w - 1]
        rows = ours[0].flatten(1).t()
        scale = rows @ g_cell / (g_cell @ g_cell)
        assert bool(((scale >= 0) & (scale <= 1 + 1e-5)).all()) and bool((scale > 0.999).any())
        torch.testing.assert_close(rows, scale[:, None] * g_cell, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_bytes", [1, 300, 1 << 20])
def test_chunked_attention_equals_full_matrix(chunk_bytes: int) -> None:
    block = _block()
    x = torch.randn(2, 6, 7, 5)
    valid = (torch.rand(2, 1, 7, 5) > 0.4).float()
    valid[1] = 0.0  # no valid cell at all: every row becomes zero
    with torch.no_grad():
        ours = partial_attention_chunked(
            x, valid, block.theta, block.phi, block.g, max_chunk_bytes=chunk_bytes
        )
        ref = partial_attention_naive(x, valid, block.theta, block.phi, block.g)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours[1].abs().max() == 0


@pytest.mark.parametrize("size", [(13, 23), (29, 11), (5, 17)])
@pytest.mark.parametrize("window", [2, 5, 8, 13])
def test_window_blocks_cover_every_cell_once_inside_their_key_square(
    size: tuple[int, int], window: int
) -> None:
    h, w = size
    seen = torch.zeros(h, w, dtype=torch.int64)
    for (rows, cols), (key_rows, key_cols) in windowed_attention_blocks(h, w, window):
        seen[rows, cols] += 1
        assert key_rows.start <= rows.start and rows.stop <= key_rows.stop
        assert key_cols.start <= cols.start and cols.stop <= key_cols.stop
        assert key_rows.stop - key_rows.start == min(window, h) and key_cols.stop - key_cols.start == min(
            window, w
        )
        assert key_rows.start >= 0 and key_rows.stop <= h and key_cols.start >= 0 and key_cols.stop <= w
    assert bool((seen == 1).all())


@pytest.mark.parametrize("size", [(13, 23), (17, 9)])
@pytest.mark.parametrize("window", [4, 7, 10])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_windowed_fused_attention_equals_full_matrix_per_window(
    size: tuple[int, int], window: int, kind: str
) -> None:
    """The in-place windowed kernel is the released full-matrix attention run on each key square."""
    block = _block()
    generator = torch.Generator().manual_seed(window + len(kind))
    h, w = size
    x = torch.randn(2, 6, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
    valid = torch.cat([_valid(kind, h, w, generator), _valid("dense", h, w, generator)])

    def naive(xs: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
        return partial_attention_naive(xs, vs, block.theta, block.phi, block.g)

    with torch.no_grad():
        ref = attend_in_windows(naive, x, valid, window)
        whole = naive(x, valid)
        for chunk_bytes in (None, 1):
            ours = partial_attention(x, valid, block.theta, block.phi, block.g, chunk_bytes, window)
            # float32 rounding of two summation orders, amplified where the valid mass is small
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(
            partial_attention(x, valid, block.theta, block.phi, block.g, None, max(size)),
            partial_attention(x, valid, block.theta, block.phi, block.g, None, None),
        )
    if kind in ("dense", "thin"):  # a window sees less than the whole map: a different, bounded rule
        assert not torch.allclose(ours, whole, rtol=1e-3, atol=1e-4)


def _assert_kernels_agree(
    block: PartialNonLocalBlock, x: torch.Tensor, mask: torch.Tensor, atol: float
) -> None:
    """The block gives the released full-matrix result with the fused and the chunked kernel."""
    outputs = {}
    with torch.no_grad():
        for kernel in AttentionKernel:
            block.kernel = kernel
            outputs[kernel] = block(x, mask)
    for kernel in (AttentionKernel.FUSED, AttentionKernel.CHUNKED):
        torch.testing.assert_close(outputs[kernel], outputs[AttentionKernel.FULL], rtol=1e-5, atol=atol)


def test_windowed_block_agrees_across_kernels_and_trains() -> None:
    block = _block()
    block.window = 4
    x = torch.randn(1, 6, 11, 9)
    mask = torch.zeros(1, 1, 44, 36)
    mask[..., 10:14, :] = 1.0
    mask[..., :, 20:23] = 1.0
    _assert_kernels_agree(block, x, mask, atol=1e-5)
    block.kernel = AttentionKernel.FUSED
    x.requires_grad_(True)
    block(x, mask).square().sum().backward()
    assert (
        x.grad is not None and bool(torch.isfinite(x.grad).all()) and block.theta.weight.grad.abs().sum() > 0
    )


def _identity_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
        conv.bias.zero_()
    return conv


def test_rows_with_vanishing_valid_mass_are_scaled_down_or_zero_as_released() -> None:
    # theta = phi = g = identity. Hole cells point along channel 0 with growing length, valid
    # cells along channel 1, so a hole query's softmax mass on valid cells is about exp(-|x_i|^2
    # ...): below 1e-12 the released renormalisation no longer brings the row back to unit mass,
    # and further down the mass underflows and the row is exactly zero.
    conv = _identity_conv(2)
    x = torch.zeros(1, 2, 2, 4)
    x[0, 1, 1, :] = 1.0  # valid row: unit vectors along channel 1
    x[0, 0, 0, :] = torch.tensor([30.0, 120.0, 2.0, 0.5]).sqrt()  # hole row
    valid = torch.zeros(1, 1, 2, 4)
    valid[..., 1, :] = 1.0
    with torch.no_grad():
        ours = partial_attention(x, valid, conv, conv, conv)
        ref = partial_attention_naive(x, valid, conv, conv, conv)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0.0)
    mass = ours[0, 1, 0]  # channel 1 of y = renormalised valid mass for these rows
    assert 0 < mass[0] < 1e-6  # scaled down, not renormalised to 1
    assert mass[1] == 0 and ours[0, :, 0, 1].abs().max() == 0  # underflowed: exactly zero
    torch.testing.assert_close(mass[2:], torch.ones(2))  # ordinary rows: renormalised


def test_fused_attention_gradients_match_full_matrix() -> None:
    block = _block(4).double()
    x = torch.randn(1, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(1, 1, 5, 3, dtype=torch.float64)
    valid[..., 1:3, 1] = 0.0
    grads = []
    for attend in (partial_attention, partial_attention_naive):
        block.zero_grad()
        x.grad = None
        weights = torch.randn(1, 4, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        (attend(x, valid, block.theta, block.phi, block.g) * weights).sum().backward()
        grads.append([x.grad.clone()] + [c.weight.grad.clone() for c in (block.theta, block.phi, block.g)])
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)


def test_fused_kernel_is_used_on_cpu_and_falls_back_to_chunks(monkeypatch) -> None:
    assert fused_kernel_available(torch.device("cpu"), torch.float32, 8, False)
    assert fused_kernel_available(torch.device("cpu"), torch.float32, 8, True)
    block = _block()
    x = torch.randn(1, 6, 4, 5)
    valid = (torch.rand(1, 1, 4, 5) > 0.3).float()
    calls = []
    monkeypatch.setattr(nonlocal_block, "fused_kernel_available", lambda *args: False)
    monkeypatch.setattr(
        nonlocal_block,
        "partial_attention_chunked",
        lambda *args: calls.append(args) or partial_attention_naive(*args[:5]),
    )
    with torch.no_grad():
        out = partial_attention(x, valid, block.theta, block.phi, block.g)
    assert len(calls) == 1
    torch.testing.assert_close(out, partial_attention_naive(x, valid, block.theta, block.phi, block.g))


def test_attention_matches_textbook_formula() -> None:
    block = _block(4)
    x = torch.randn(1, 4, 3, 4)
    valid = torch.ones(1, 1, 3, 4)
    valid[..., 0, :2] = 0
    q = block.theta(x).flatten(2)[0].t().double()
    k = block.phi(x).flatten(2)[0].double()
    v = block.g(x).flatten(2)[0].t().double()
    a = torch.softmax(q @ k, dim=-1) * valid.flatten().double()
    a = a / a.sum(-1, keepdim=True)
    ref = (a @ v).t().reshape(1, 4, 3, 4).detach()
    with torch.no_grad():
        for attend in (partial_attention, partial_attention_chunked):
            ours = attend(x, valid, block.theta, block.phi, block.g, max_chunk_bytes=64)
            torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-5)


def test_known_cells_pass_through_and_holes_change() -> None:
    block = _block()
    x = torch.randn(1, 6, 8, 8)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 10:20, 4:28] = 1.0
    with torch.no_grad():
        out = block(x, mask)
    valid = validity_map(mask, (8, 8)).bool().expand_as(x)
    assert torch.equal(out[valid], x[valid])
    assert not torch.allclose(out[~valid], x[~valid])


def test_validity_rule_combines_bilinear_and_nearest_taps() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 0, 0] = 1.0  # only the nearest tap of cell (0, 0) sees it
    assert validity_map(mask, (2, 2))[0, 0].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 6, 6] = 1.0  # only the bilinear taps (rows/cols 5-6) of cell (1, 1) see it
    assert validity_map(mask, (2, 2))[0, 0].tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_all_kernels_agree_end_to_end() -> None:
    block = _block()
    x = torch.randn(1, 6, 7, 9)
    mask = torch.zeros(1, 1, 28, 36)
    mask[..., 3:9, :] = 1.0
    _assert_kernels_agree(block, x, mask, atol=1e-6)
    block.naive = True  # the older switch still selects the released formulation
    assert block.kernel is AttentionKernel.FULL and block.naive


def test_photo_without_hole_skips_the_attention_and_keeps_its_features(monkeypatch) -> None:
    block = _block()
    x = torch.randn(1, 6, 5, 7)
    mask = torch.zeros(1, 1, 20, 28)

    def fail(*args):
        raise AssertionError("attention computed for a photo without holes")

    monkeypatch.setattr(block, "attention", fail)
    with torch.no_grad():
        assert torch.equal(block(x, mask), x)


def test_training_without_hole_still_reaches_every_parameter() -> None:
    block = PartialNonLocalBlock(4, num_res_blocks=1).train()
    x = torch.randn(1, 4, 3, 5, requires_grad=True)
    out = block(x, torch.zeros(1, 1, 12, 20))
    out.sum().backward()
    assert torch.equal(out, x)
    assert all(p.grad is not None for p in block.parameters())


def test_blend_fusion_starts_at_the_trunk_and_reaches_the_released_fill() -> None:
    """A blending block starts as the identity, so a scratch mapping built on a trained trunk
    begins with that trunk's restoration; at a blend of one it is the released block, and in
    between each channel moves linearly from its own features to the attention's."""
    torch.manual_seed(2)
    replace = PartialNonLocalBlock(4, num_res_blocks=1)
    blend = PartialNonLocalBlock(4, num_res_blocks=1, fusion="blend")
    assert blend.fusion is HoleFusion.BLEND and replace.blend is None
    blend.load_state_dict({**replace.state_dict(), "blend": torch.zeros(1, 4, 1, 1)})
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    mask = torch.zeros(1, 1, 24, 24)
    mask[..., 8:14, :] = 1.0
    holes = validity_map(mask, (6, 6)) == 0
    assert holes.any()
    out = blend(x, mask)
    assert torch.equal(out, x)
    out.sum().backward()
    assert blend.blend.grad.abs().sum() > 0  # the gate opens from the first step
    with torch.no_grad():
        released = replace(x, mask)
        blend.blend.fill_(1.0)
        assert torch.allclose(blend(x, mask), released, atol=1e-6)
        blend.blend.copy_(torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 4, 1, 1))
        mixed = blend(x, mask)
    expected = x + blend.blend * (released - x)
    assert torch.allclose(mixed, torch.where(holes, expected, x), atol=1e-6)
    assert not torch.equal(mixed, x) and not torch.allclose(mixed, released)


def _tiles_image(values: list[list[float]], p: int, c: int = 2) -> torch.Tensor:
    grid = torch.tensor(values, dtype=torch.float32)
    x = grid.repeat_interleave(p, 0).repeat_interleave(p, 1)
    return torch.stack([x, x * 0.5 + 1][:c])


def test_match_patches_picks_most_similar_known_tile() -> None:
    x = _tiles_image([[1.0, -1.0], [5.0, 9.0]], 2)
    x[1, 2:, 2:] = -3.0  # tile 3 points elsewhere than the others
    holes = torch.zeros(4, 4)
    holes[2:, 2:] = 1.0
    flags, sources = match_patches(x, holes, 2)
    assert flags.tolist() == [False, False, False, True]
    cos = F.cosine_similarity(
        x[:, 2:, 2:].reshape(1, -1), torch.stack([x[:, :2, :2], x[:, :2, 2:], x[:, 2:, :2]]).reshape(3, -1)
    )
    assert sources.tolist() == [int(cos.argmax())]


def test_hole_tile_needs_more_than_sixty_percent() -> None:
    x = torch.randn(2, 4, 4)
    holes = torch.zeros(4, 4)
    holes[0, 0:2] = 1.0
    holes[1, 0] = 1.0  # 3 of 4 cells of tile 0 = 75 %
    holes[2, 2:4] = 1.0  # 2 of 4 cells of tile 3 = 50 %
    flags, _ = match_patches(x, holes, 2)
    assert flags.tolist() == [True, False, False, False]


def test_similarities_in_chunks_choose_the_same_sources() -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 14, 10)
    holes = (torch.rand(14, 10) > 0.5).float()
    flags, whole = match_patches(x, holes, 2, max_similarity_bytes=1 << 30)
    _, chunked = match_patches(x, holes, 2, max_similarity_bytes=1)  # one hole tile per chunk
    assert whole.numel() == int(flags.sum()) > 1
    assert torch.equal(whole, chunked)


def test_transfer_copies_tiles_and_zeroes_uncovered_remainder() -> None:
    attention = PatchAttention(2, 2)
    x = torch.randn(1, 2, 5, 4)
    holes = torch.zeros(1, 1, 5, 4)
    holes[..., 0:2, 0:2] = 1.0
    out = attention.transfer(x, holes)
    assert torch.equal(out[0, :, 4, :], torch.zeros(2, 4))  # row 4 lies outside the 2x2 tile grid
    assert torch.equal(out[0, :, 2:4, :], x[0, :, 2:4, :])
    copied = out[0, :, 0:2, 0:2]
    candidates = [x[0, :, 0:2, 2:4], x[0, :, 2:4, 0:2], x[0, :, 2:4, 2:4]]
    assert any(torch.equal(copied, c) for c in candidates)


def test_transfer_without_source_keeps_features() -> None:
    attention = PatchAttention(2, 2)
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(attention.transfer(x, torch.ones(1, 1, 4, 4)), x)
    assert torch.equal(attention.transfer(x, torch.zeros(1, 1, 4, 4)), x)


@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_in_place_transfer_equals_tile_matrix_transfer_exactly(p: int, layout) -> None:
    torch.manual_seed(p)
    x = torch.randn(4, 3, 11, 8).contiguous(memory_format=layout)  # sides multiples of neither tile
    holes = (torch.rand(4, 1, 11, 8) > 0.45).float()
    holes[1] = 0.0  # no hole tile: untouched
    holes[2] = 1.0  # only hole tiles: nothing to copy from, untouched
    ref = transfer_reference(x, holes, p)
    attention = PatchAttention(3, p)
    copy = attention.transfer(x, holes)
    assert torch.equal(copy, ref)
    inplace = x.clone()
    assert attention.transfer(inplace, holes, inplace=True) is inplace
    assert torch.equal(inplace, ref)
    assert torch.equal(inplace[1:3], x[1:3])


def test_blending_patch_attention_moves_only_the_holes_by_its_gate() -> None:
    torch.manual_seed(6)
    released = PatchAttention(3, 2)
    blending = PatchAttention(3, 2, fusion="blend")
    assert released.blend is None
    blending.load_state_dict({**released.state_dict(), "blend": torch.zeros(1, 3, 1, 1)})
    z = torch.randn(1, 3, 8, 6)
    mask = torch.zeros(1, 1, 32, 24)
    mask[..., 4:9, :] = 1
    holes = hole_map(mask, (8, 6)).bool().expand_as(z)
    with torch.no_grad():
        assert torch.equal(blending(z, mask), z)  # closed gate: the trunk's features pass through
        full = released(z, mask)
        blending.blend.fill_(1.0)
        opened = blending(z, mask)
    assert torch.allclose(opened[holes], full[holes], atol=1e-6)
    assert torch.equal(opened[~holes], z[~holes]) and not torch.allclose(full[~holes], z[~holes])


def test_patch_attention_forward_equals_previous_formula_and_trains() -> None:
    torch.manual_seed(5)
    attention = PatchAttention(3, 2).eval()
    z = torch.randn(2, 3, 9, 7)
    mask = (torch.rand(2, 1, 36, 28) > 0.6).float()
    holes = hole_map(mask, (9, 7))
    with torch.no_grad():
        ref = attention.combine(torch.cat([z, transfer_reference(attention.block(z), holes, 2), holes], 1))
        assert torch.equal(attention(z, mask), ref)
    z.requires_grad_(True)
    attention(z, mask).sum().backward()
    assert z.grad is not None and attention.block.conv1.weight.grad is not None
