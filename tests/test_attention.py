"""The memory-efficient partial non-local attention and the patch attention, against direct formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stage2_mapping.nonlocal_block import (
    PartialNonLocalBlock,
    partial_attention,
    partial_attention_naive,
    validity_map,
)
from stage2_mapping.patch_attention import PatchAttention, match_patches


def _block(channels: int = 6) -> PartialNonLocalBlock:
    torch.manual_seed(1)
    block = PartialNonLocalBlock(channels, num_res_blocks=1).eval()
    with torch.no_grad():
        for conv in (block.theta, block.phi):
            conv.weight.mul_(3.0)  # peaky attention, as in the released model
    return block


@pytest.mark.parametrize("chunk_bytes", [1, 300, 1 << 20])
def test_chunked_attention_equals_full_matrix(chunk_bytes: int) -> None:
    block = _block()
    x = torch.randn(2, 6, 7, 5)
    valid = (torch.rand(2, 1, 7, 5) > 0.4).float()
    valid[1] = 0.0  # no valid cell at all: every row becomes zero
    with torch.no_grad():
        ours = partial_attention(x, valid, block.theta, block.phi, block.g, max_chunk_bytes=chunk_bytes)
        ref = partial_attention_naive(x, valid, block.theta, block.phi, block.g)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours[1].abs().max() == 0


def test_attention_matches_textbook_formula() -> None:
    block = _block(4)
    x = torch.randn(1, 4, 3, 4)
    valid = torch.ones(1, 1, 3, 4)
    valid[..., 0, :2] = 0
    with torch.no_grad():
        ours = partial_attention(x, valid, block.theta, block.phi, block.g, max_chunk_bytes=64)
        q = block.theta(x).flatten(2)[0].t().double()
        k = block.phi(x).flatten(2)[0].double()
        v = block.g(x).flatten(2)[0].t().double()
        a = torch.softmax(q @ k, dim=-1) * valid.flatten().double()
        a = a / a.sum(-1, keepdim=True)
        ref = (a @ v).t().reshape(1, 4, 3, 4)
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


def test_naive_and_chunked_block_agree_end_to_end() -> None:
    block = _block()
    x = torch.randn(1, 6, 8, 8)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 3:9, :] = 1.0
    with torch.no_grad():
        chunked = block(x, mask)
        block.naive = True
        naive = block(x, mask)
    torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-6)


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
