"""Running a U-Net generator on a photo of any size: pad to its multiple, translate, crop back."""

from __future__ import annotations

import torch
from torch import nn

from latent_restore.core.imaging import crop_to, pad_to_multiple


def translate(generator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``generator`` (with ``config.multiple``) to ``x`` of any size, without gradients.

    The input is reflection-padded on the right and bottom to the generator's multiple and the
    output cropped back, so the photo is never resized. Dropout and BatchNorm run in eval mode
    (the caller's network is expected in eval mode, as :func:`load_component` returns it): the
    restoration is deterministic, unlike the paper's test-time dropout.

    Args:
        generator: a :class:`~latent_restore.core.unet.UNetGenerator`.
        x: ``N x C x H x W`` in [-1, 1], on any device.

    Returns:
        ``N x out_channels x H x W`` float32 on the CPU, in [-1, 1].
    """
    param = next(generator.parameters())
    padded, size = pad_to_multiple(x, generator.config.multiple)
    with torch.inference_mode():
        out = generator(padded.to(param.device, param.dtype))
    return crop_to(out.to(torch.float32).cpu(), size)
