"""The in-place instance norm and the copy-free reflection-padded convolution, against torch's own ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_restore.core import layers
from latent_restore.core.layers import INSTANCE_NORM_EPS, instance_norm, reflect_conv

CHANNELS_LAST = torch.channels_last


def _features(shape: tuple[int, ...], layout=torch.contiguous_format, offset: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator) * 2.0 + offset
    x[:, 0] *= 0.01  # one channel with a small spread next to its mean
    return x.contiguous(memory_format=layout)


def test_contiguous_instance_norm_is_in_place_and_bit_identical_to_torch() -> None:
    x = _features((2, 5, 9, 7))
    ref = F.instance_norm(x, eps=INSTANCE_NORM_EPS)
    storage = x.data_ptr()
    with torch.no_grad():
        out = instance_norm(x)
    assert out.data_ptr() == storage
    assert torch.equal(out, ref)


@pytest.mark.parametrize("shape", [(1, 6, 11, 13), (3, 4, 5, 9)])
@pytest.mark.parametrize("block_elements", [1, 50, 1 << 22])  # one row per slab, a few rows, all rows
def test_channels_last_instance_norm_matches_double_precision(shape, block_elements, monkeypatch) -> None:
    monkeypatch.setattr(layers, "NORM_BLOCK_ELEMENTS", block_elements)
    x = _features(shape, CHANNELS_LAST)
    truth = F.instance_norm(x.double(), eps=INSTANCE_NORM_EPS)
    storage = x.data_ptr()
    with torch.no_grad():
        out = instance_norm(x)
    assert out.data_ptr() == storage and out.is_contiguous(memory_format=CHANNELS_LAST)
    torch.testing.assert_close(out.double(), truth, rtol=0, atol=2e-6)


def test_channels_last_statistics_stay_accurate_at_large_sizes() -> None:
    # torch's channels-last batch-norm kernel sums float32 row after row and is ~1e-4 off here.
    x = _features((1, 4, 512, 512), CHANNELS_LAST, offset=5.0)
    truth = F.instance_norm(x.double(), eps=INSTANCE_NORM_EPS)
    with torch.no_grad():
        out = instance_norm(x)
    assert float((out.double() - truth).abs().max()) < 5e-6


def test_instance_norm_of_other_strides_dtypes_and_constant_channels() -> None:
    wide = _features((2, 3, 6, 10))
    x = wide[..., 2:9]  # neither contiguous nor channels-last
    truth = F.instance_norm(x.double(), eps=INSTANCE_NORM_EPS)
    with torch.no_grad():
        out = instance_norm(x)
    torch.testing.assert_close(out.double(), truth, rtol=0, atol=2e-6)
    assert torch.equal(wide[..., :2], _features((2, 3, 6, 10))[..., :2])  # outside the view: untouched

    x64 = _features((1, 3, 7, 5), CHANNELS_LAST).double()
    truth = F.instance_norm(x64, eps=INSTANCE_NORM_EPS)
    with torch.no_grad():
        torch.testing.assert_close(instance_norm(x64), truth, rtol=0, atol=1e-12)

    bf16 = _features((1, 3, 7, 5), CHANNELS_LAST).bfloat16()
    truth = F.instance_norm(bf16.double(), eps=INSTANCE_NORM_EPS)
    with torch.no_grad():
        out = instance_norm(bf16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), truth, rtol=0, atol=0.05)

    constant = torch.full((1, 2, 4, 4), 7.0).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        assert torch.equal(instance_norm(constant), torch.zeros(1, 2, 4, 4))


def test_instance_norm_with_autograd_keeps_its_input() -> None:
    x = _features((1, 3, 5, 4), CHANNELS_LAST).requires_grad_(True)
    before = x.detach().clone()
    out = instance_norm(x)
    out.pow(2).sum().backward()
    assert torch.equal(x.detach(), before)
    torch.testing.assert_close(out, F.instance_norm(before, eps=INSTANCE_NORM_EPS))
    assert x.grad is not None


CONVS = [  # in, out, kernel, dilation, pad: the VAE head, the detector head, a dilated small conv
    (8, 3, 7, 1, 3),
    (5, 1, 3, 1, 1),
    (4, 2, 3, 2, 2),
]


@pytest.mark.parametrize(("cin", "cout", "kernel", "dilation", "pad"), CONVS)
@pytest.mark.parametrize("size", [(9, 14), (7, 7)])  # 7 = the smallest side a pad of 3 allows here
@pytest.mark.parametrize("layout", [torch.contiguous_format, CHANNELS_LAST])
def test_border_reflect_conv_equals_padded_copy(cin, cout, kernel, dilation, pad, size, layout) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, dilation=dilation).to(memory_format=layout)
    x = torch.randn(2, cin, *size).contiguous(memory_format=layout)
    with torch.no_grad():
        assert layers._border_conv_applies(conv, x, pad)
        ours = reflect_conv(conv, x, pad)
        ref = conv(F.pad(x, (pad,) * 4, mode="reflect"))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_border_reflect_conv_only_where_it_pays_and_is_valid() -> None:
    x = torch.randn(1, 64, 9, 9)
    with torch.no_grad():
        assert layers._border_conv_applies(nn.Conv2d(64, 3, 7), x, 3)  # the VAE head
        assert not layers._border_conv_applies(nn.Conv2d(64, 64, 3), x, 1)  # conv dominates the copy
        assert not layers._border_conv_applies(nn.Conv2d(64, 3, 3, stride=2), x, 1)
        assert not layers._border_conv_applies(nn.Conv2d(64, 3, 3), x, 2)  # not a same-size conv
        assert not layers._border_conv_applies(nn.Conv2d(64, 3, 7), x[..., :6], 3)  # too narrow
    assert not layers._border_conv_applies(nn.Conv2d(64, 3, 7), x, 3)  # autograd: the plain path

    conv = nn.Conv2d(4, 3, 3)
    x = torch.randn(1, 4, 6, 5, requires_grad=True)
    reflect_conv(conv, x, 1).sum().backward()
    ref = x.detach().requires_grad_(True)
    conv(F.pad(ref, (1,) * 4, mode="reflect")).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)
