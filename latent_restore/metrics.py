"""Image-quality metrics: PSNR, SSIM (scikit-image's), mask F1 and the Fréchet Inception Distance."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB of uint8 ``image`` against uint8 ``reference``."""
    return float(peak_signal_noise_ratio(reference, image, data_range=255))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """SSIM of uint8 ``H x W x 3`` (or gray) images, averaged over channels."""
    channel_axis = 2 if reference.ndim == 3 else None
    return float(structural_similarity(reference, image, data_range=255, channel_axis=channel_axis))


@dataclass
class MaskCounts:
    """Pixel counts for a predicted defect mask against the true one (summed over photos)."""

    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        truth, predicted = truth.astype(bool), predicted.astype(bool)
        self.true_positive += int((truth & predicted).sum())
        self.false_positive += int((~truth & predicted).sum())
        self.false_negative += int((truth & ~predicted).sum())

    @property
    def f1(self) -> float:
        denominator = 2 * self.true_positive + self.false_positive + self.false_negative
        return 1.0 if denominator == 0 else 2 * self.true_positive / denominator


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians (Heusel et al. 2017)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``N x D`` features."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


class InceptionFeatures:
    """2048-d pool features of torchvision's Inception-v3, with weights the user supplies.

    Nothing is downloaded: ``weights`` is a state-dict file of ``torchvision.models.inception_v3``
    (read with ``weights_only=True``). Images are resized to 299x299 and normalised with the
    ImageNet statistics torchvision's weights expect.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, weights: str | os.PathLike[str], device: str = "cpu") -> None:
        from torchvision.models import inception_v3

        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        if not any(k.startswith("AuxLogits.") for k in state_dict):
            model.AuxLogits = None
        model.load_state_dict(state_dict, strict=True)
        model.fc = torch.nn.Identity()
        self.model = model.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """``N x 2048`` features of uint8 RGB images."""
        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        out = []
        for start in range(0, len(images), batch_size):
            batch = [
                torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255
                for im in images[start : start + batch_size]
            ]
            x = torch.stack(
                [
                    F.interpolate(b[None], size=(299, 299), mode="bilinear", align_corners=False)[0]
                    for b in batch
                ]
            )
            out.append(self.model(((x - mean) / std).to(self.device)).cpu().numpy())
        return np.concatenate(out)


def fid(reference: list[np.ndarray], images: list[np.ndarray], extractor: InceptionFeatures) -> float:
    """FID between two sets of uint8 RGB images."""
    return frechet_distance(*feature_statistics(extractor(reference)), *feature_statistics(extractor(images)))
