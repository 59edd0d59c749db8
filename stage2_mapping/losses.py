"""Losses specific to stage 2: the latent L1 of the mapping and the scratch detector's loss.

The mapping's image-level terms (conditional GAN, feature matching, VGG) are shared ones from
:mod:`latent_restore.core.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_l1_loss(mapped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the mapped latent and VAE B's latent of the clean photo (``--use_l1_feat``; spec §8.3).

    The target is detached: VAE B is frozen and only defines where the mapping should land.
    """
    return F.l1_loss(mapped.float(), target.detach().float())


def scratch_detection_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: float = 1.0,
    focal_gamma: float = 0.0,
    dice_weight: float = 0.0,
) -> torch.Tensor:
    """Weighted binary cross-entropy with an optional focal factor (Lin et al. 2017).

    Scratch pixels are a few percent of a photo, so plain BCE learns to predict "no scratch"
    everywhere. ``pos_weight`` up-weights the scratch pixels; ``focal_gamma > 0`` multiplies each
    pixel's loss by ``(1 - p_t)^gamma`` (``p_t`` = predicted probability of the true class), which
    shifts the weight from the many easy background pixels to the hard ones.

    Args:
        logits: ``N x 1 x H x W`` raw detector outputs.
        mask: ``N x 1 x H x W`` targets in {0, 1} (1 = scratch).
        pos_weight: weight of the scratch class.
        focal_gamma: focusing exponent; 0 gives weighted BCE.
        dice_weight: weight of :func:`soft_dice_loss`, added to the per-pixel term.

    Returns:
        The mean per-pixel loss, plus the weighted Dice term.
    """
    logits = logits.float()
    mask = mask.float()
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=weight, reduction="none")
    if focal_gamma > 0:
        prob = torch.sigmoid(logits)
        p_true = prob * mask + (1 - prob) * (1 - mask)
        bce = bce * (1 - p_true).pow(focal_gamma)
    loss = bce.mean()
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(logits, mask)
    return loss


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - 2|P∩M| / (|P| + |M|)`` with probabilities for ``P``, over the whole batch.

    A per-pixel loss scores every pixel alike; the mask F1 that decides whether holes get filled
    counts only the scratch pixels and the false alarms. Dice is that F1 made differentiable, so
    it pulls thin scratches' borders in and false alarms out where the per-pixel term is already
    small. Pooled over the batch (not per image) so the defect-free crops of a batch, whose masks
    are empty, count through their false alarms instead of making the ratio undefined.
    """
    prob = torch.sigmoid(logits.float())
    mask = mask.float()
    overlap = (prob * mask).sum()
    return 1 - (2 * overlap + 1) / (prob.sum() + mask.sum() + 1)


def mask_iou(logits: torch.Tensor, mask: torch.Tensor, threshold: float = 0.4) -> torch.Tensor:
    """Intersection over union of ``sigmoid(logits) >= threshold`` with the mask (1 when both are empty).

    0.4 is the released detector's threshold (spec §4).
    """
    predicted = torch.sigmoid(logits.float()) >= threshold
    target = mask > 0.5
    union = (predicted | target).sum()
    if union == 0:
        return torch.ones((), device=logits.device)
    return (predicted & target).sum().float() / union.float()
