"""Colorize a photo: keep its lightness exactly, predict only its chroma."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from latent_restore.colorize.lab import (
    denormalize_ab,
    fit_chroma_to_gamut,
    lab_to_linear_rgb,
    linear_to_srgb,
    normalize_lightness,
    rgb_to_lab,
)
from latent_restore.core.imaging import crop_to, pad_to_multiple


def colorize(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Colorize ``image`` with a :class:`~latent_restore.colorize.network.Colorizer`.

    The photo's CIE L channel is computed (in float64), the network predicts ``ab`` from it (padded
    to its multiple, cropped back), the chroma is shrunk where needed to stay inside the sRGB gamut
    (:func:`latent_restore.colorize.lab.fit_chroma_to_gamut`), and the photo's own L is recombined
    with it. The L channel of the result therefore equals the input's, up to float rounding (and
    8-bit rounding for uint8 images). Any existing chroma of the input is replaced.

    Args:
        model: the colorizer, in eval mode, on any device.
        image: ``H x W x 3`` (or ``H x W`` gray) RGB, uint8 or float in [0, 1].

    Returns:
        ``H x W x 3`` RGB: uint8 for a uint8 input, else float32 in [0, 1].
    """
    lightness, is_uint8 = lightness_of(image)
    return chroma_to_rgb(lightness, predict_ab(model, lightness), is_uint8)


def lightness_of(image: np.ndarray) -> tuple[torch.Tensor, bool]:
    """CIE L (float64, ``1 x 1 x H x W``) of an RGB or gray image, and whether it was uint8."""
    array = np.asarray(image)
    is_uint8 = array.dtype == np.uint8
    rgb = array.astype(np.float64) / 255.0 if is_uint8 else np.clip(array.astype(np.float64), 0, 1)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected H x W or H x W x 3, got shape {array.shape}")
    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None])
    return lab[:, :1], is_uint8


def predict_ab(model: nn.Module, lightness: torch.Tensor) -> torch.Tensor:
    """The colorizer's ab (float64, CIE units) for CIE L ``1 x 1 x H x W``, padded to its multiple."""
    param = next(model.parameters())
    padded, size = pad_to_multiple(normalize_lightness(lightness).float(), model.config.multiple)
    with torch.inference_mode():
        predicted = model(padded.to(param.device, param.dtype))
    return denormalize_ab(crop_to(predicted.to(torch.float64).cpu(), size))


def chroma_to_rgb(lightness: torch.Tensor, ab: torch.Tensor, as_uint8: bool) -> np.ndarray:
    """RGB ``H x W x 3`` of L and ab, the chroma shrunk to the sRGB gamut where needed."""
    ab = fit_chroma_to_gamut(lightness, ab)
    linear = lab_to_linear_rgb(torch.cat([lightness, ab], dim=1)).clamp(0, 1)
    out = linear_to_srgb(linear)[0].permute(1, 2, 0).numpy().clip(0, 1)
    if as_uint8:
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return out.astype(np.float32)
