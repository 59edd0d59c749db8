"""Pre- and post-processing of the released stage-1 pipeline, reproduced exactly (spec §3.2, §3.8, §4).

These functions exist so that the ``official`` preset can reproduce, byte for byte, what the
released scripts write. Several of their steps are quirks our default preset fixes (see
``docs/official-quirks.md``): resizing to multiples of 4 or 16 instead of padding, min-max
stretching every saved image, a detector that always runs at a short side of 256, and a saved
mask that turns all-ones into all-zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latent_restore.core.imaging import HR_MASK_DILATION, to_tensor

QUALITY_MULTIPLE = 4
DETECTION_MULTIPLE = 16
DETECTION_SHORT_SIDE = 256
DETECTION_THRESHOLD = 0.4
MINMAX_EPS = 1e-5


def round_to_multiple(value: float, multiple: int) -> int:
    """``round(value / multiple) * multiple`` with Python's round-half-to-even (130/4 = 32.5 -> 128)."""
    return int(round(value / multiple) * multiple)


def full_mode_size(width: int, height: int, multiple: int = QUALITY_MULTIPLE) -> tuple[int, int]:
    """``test_mode Full``: each side rounded to the nearest multiple (returns ``(width, height)``)."""
    return round_to_multiple(width, multiple), round_to_multiple(height, multiple)


def scale_mode_size(width: int, height: int, short_side: int = 256) -> tuple[int, int]:
    """``test_mode Scale``: short side to 256, long side proportional, both rounded to multiples of 4."""
    return _short_side_to(width, height, short_side, QUALITY_MULTIPLE)


def _short_side_to(width: int, height: int, short_side: int, multiple: int) -> tuple[int, int]:
    """``(width, height)`` with the short side at ``short_side``, the long one proportional, both
    rounded to ``multiple`` (the rule both released resizes use)."""
    if width < height:
        w, h = short_side, height / width * short_side
    else:
        w, h = width / height * short_side, short_side
    return round_to_multiple(w, multiple), round_to_multiple(h, multiple)


def resize_full_mode(image: Image.Image) -> Image.Image:
    """Quality-mode input: PIL bilinear resize to :func:`full_mode_size`, only if the size changes."""
    size = full_mode_size(*image.size)
    return image if size == image.size else image.resize(size, Image.BILINEAR)


def detection_full_size(image: Image.Image) -> Image.Image:
    """``detection.py --input_size full_size``: PIL bicubic to multiples of 16 (what stage 1 restores)."""
    size = full_mode_size(*image.size, multiple=DETECTION_MULTIPLE)
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def detection_network_size(height: int, width: int) -> tuple[int, int]:
    """Size the detector always runs at: short side 256, long side rounded to a multiple of 16."""
    w, h = _short_side_to(width, height, DETECTION_SHORT_SIDE, DETECTION_MULTIPLE)
    return h, w


def minmax_uint8(tensor: torch.Tensor) -> np.ndarray:
    """What the released scripts write for a ``1 x C x H x W`` tensor (torchvision saver, normalize=True).

    The tensor's own minimum becomes 0 and its maximum 255 (so a constant image becomes all zeros),
    then ``x*255 + 0.5`` is clamped and truncated. One channel is written as three equal channels.
    """
    t = tensor.detach().to(torch.float32).cpu()[0].clone()
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1).clone()
    low, high = float(t.min()), float(t.max())
    t.clamp_(min=low, max=high).sub_(low).div_(max(high - low, MINMAX_EPS))
    return t.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def saved_restoration(output: torch.Tensor) -> np.ndarray:
    """The stage-1 file content for a restored tensor in [-1, 1]: ``(y+1)/2``, then min-max stretched."""
    return minmax_uint8((output + 1.0) / 2.0)


def dilate_mask(mask: np.ndarray, iterations: int = HR_MASK_DILATION) -> np.ndarray:
    """HR pre-processing: OpenCV dilation with a 3x3 all-ones kernel, ``iterations`` times."""
    return cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=iterations)


def fill_holes(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Paint the scratch mask white: ``image*(1 - m/255) + (m/255)*255`` per channel, truncated to uint8.

    Args:
        image: uint8 ``H x W x 3``.
        mask: uint8 ``H x W`` or ``H x W x 3``, 0..255 (255 = scratch).
    """
    m = mask.astype(np.uint8) / 255
    if m.ndim == 2:
        m = m[..., None]
    return (image.astype(np.uint8) * (1 - m) + m * 255).astype(np.uint8)


@dataclass
class ScratchInput:
    """Stage-1 inputs of scratch mode.

    Attributes:
        hole_image: uint8 ``H x W x 3`` photo with the (dilated) mask painted white.
        mask_uint8: uint8 ``H x W`` mask after the HR dilation (unchanged without HR).
        image: ``1 x 3 x H x W`` tensor of ``hole_image`` in [-1, 1].
        mask: ``1 x 1 x H x W`` float tensor, 1 = scratch.
    """

    hole_image: np.ndarray
    mask_uint8: np.ndarray
    image: torch.Tensor
    mask: torch.Tensor


def prepare_scratch_input(image: np.ndarray, mask: np.ndarray, hr: bool = False) -> ScratchInput:
    """Scratch/HR-mode pre-processing of a photo and its 0/255 mask (no resizing happens here)."""
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if hr:
        mask = dilate_mask(mask)
    hole = fill_holes(image, mask)
    mask_tensor = torch.from_numpy(mask.astype(np.float32) / 255.0)[None, None]
    return ScratchInput(hole, mask, to_tensor(hole), mask_tensor)


@dataclass
class ScratchDetection:
    """Every intermediate of ``detection.py --input_size full_size`` for one photo.

    Attributes:
        full_size_image: uint8 ``h x w x 3``: the photo resized to multiples of 16 (restored next).
        gray: uint8 ``h x w`` PIL "L" luma.
        net_input: ``1 x 1 x H' x W'`` the gray image in [-1, 1] rescaled to a short side of 256.
        prob: ``1 x 1 x H' x W'`` sigmoid of the logits.
        prob_full_size: ``1 x 1 x h x w`` nearest resize of ``prob``.
        mask: ``1 x 1 x h x w`` float, ``prob_full_size >= 0.4``.
        saved_mask: uint8 ``h x w x 3``: the mask file as written (min-max normalised).
    """

    full_size_image: np.ndarray
    gray: np.ndarray
    net_input: torch.Tensor
    prob: torch.Tensor
    prob_full_size: torch.Tensor
    mask: torch.Tensor
    saved_mask: np.ndarray


@torch.no_grad()
def detect_scratches(detector: torch.nn.Module, image: Image.Image) -> ScratchDetection:
    """Run the released scratch-detection chain with ``detector`` (our :class:`ScratchDetector`)."""
    full = detection_full_size(image.convert("RGB"))
    gray = np.asarray(full.convert("L"))
    h, w = gray.shape
    param = next(detector.parameters())
    x = to_tensor(gray).to(param.device, param.dtype)
    net_input = F.interpolate(x, size=detection_network_size(h, w), mode="bilinear", align_corners=False)
    prob = torch.sigmoid(detector(net_input)).to(torch.float32)
    prob_full = F.interpolate(prob, size=(h, w), mode="nearest")
    mask = (prob_full >= DETECTION_THRESHOLD).to(torch.float32)
    return ScratchDetection(
        np.asarray(full), gray, net_input.cpu(), prob.cpu(), prob_full.cpu(), mask.cpu(), minmax_uint8(mask)
    )
