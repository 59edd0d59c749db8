"""``latent-restore eval``: degrade clean photos reproducibly, restore them, and score every method.

Each clean photo is centre-cropped to ``size x size``, degraded with the default synthetic mix
(seeded per photo from ``(seed, index)``), then restored by latent-restore and by classical
baselines. PSNR and SSIM (scikit-image) are measured against the clean crop, next to the degraded
input itself; with scratches, the F1 of the predicted defect mask against the true one too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from latent_restore.core.atomic import write_atomic
from latent_restore.core.data import center_square_resize, list_images, load_rgb, sample_rng
from latent_restore.core.degradations import DegradationConfig, sample_degradation, with_defects
from latent_restore.core.imaging import encode_png, quantize
from latent_restore.core.splits import split
from latent_restore.metrics import MaskCounts, psnr, ssim
from latent_restore.pipeline import RestorationOptions, RestorationPipeline

logger = logging.getLogger(__name__)

GRID_ROWS = 8


@dataclass
class EvalProtocol:
    """Everything that defines an evaluation run (stored in ``results.json``)."""

    clean_dir: str
    size: int = 256
    seed: int = 0
    with_scratch: bool = False
    hr: bool = False
    held_out_only: bool = True
    degradation: str = "DegradationConfig() default mix"
    methods_note: str = "latent-restore runs without face enhancement; baselines use OpenCV"


@dataclass
class EvalCase:
    name: str
    clean: np.ndarray
    degraded: np.ndarray
    mask: np.ndarray


@dataclass
class MethodScores:
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    mask: MaskCounts | None = None

    def summary(self) -> dict:
        values = list(self.per_image.values())
        out = {
            "psnr": float(np.mean([v["psnr"] for v in values])),
            "ssim": float(np.mean([v["ssim"] for v in values])),
        }
        if self.mask is not None:
            out["mask_f1"] = self.mask.f1
        out["per_image"] = self.per_image
        return out


def evaluation_photos(root: Path, held_out_only: bool) -> list[Path]:
    """The photos an evaluation reads: the held-out split of ``root`` (or all of them), in order.

    Raises:
        FileNotFoundError: there is none, saying where it looked.
    """
    paths = list_images(root)
    if held_out_only:
        paths = split(paths, root)[1]
    if not paths:
        where = " in the held-out split" if held_out_only else ""
        raise FileNotFoundError(f"no photos under {root}{where}")
    return paths


def build_cases(protocol: EvalProtocol) -> list[EvalCase]:
    """Clean crops and their degraded versions; the same protocol always gives the same cases."""
    root = Path(protocol.clean_dir)
    paths = evaluation_photos(root, protocol.held_out_only)
    config = with_defects(DegradationConfig(), protocol.with_scratch)
    cases = []
    for index, path in enumerate(paths):
        clean = center_square_resize(load_rgb(path), protocol.size)
        result = sample_degradation(clean, sample_rng(protocol.seed, 0, index), config)
        cases.append(EvalCase(path.relative_to(root).as_posix(), clean, result.image, result.mask > 0))
    return cases


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise level (in 8-bit levels) by Immerkær's Laplacian-difference estimator (1996)."""
    gray = image.astype(np.float64).mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = cv2.filter2D(gray, -1, kernel)[1:-1, 1:-1]
    if response.size == 0:
        return 0.0
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6.0)


def nlmeans(image: np.ndarray) -> np.ndarray:
    """OpenCV non-local means with the filter strength set from the estimated noise level."""
    h = float(np.clip(0.9 * noise_sigma(image), 3.0, 30.0))
    bgr = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(image[..., ::-1]), None, h, h, 7, 21)
    return bgr[..., ::-1].copy()


def nlmeans_inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Non-local means, then OpenCV Telea inpainting of the predicted defect mask."""
    return cv2.inpaint(nlmeans(image), mask.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)


def auto_levels(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Per-channel percentile stretch, what a person does with an image editor's "auto levels"."""
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        lo, hi = np.percentile(image[..., c], (low, high))
        if hi - lo < 1:
            out[..., c] = image[..., c]
            continue
        out[..., c] = np.clip((image[..., c].astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255)
    return out


CLASSICAL = ("nlmeans", "nlmeans+levels", "nlmeans+inpaint", "nlmeans+inpaint+levels")
"""The classical baselines; the "best classical" comparison takes the best of those present."""


def best_classical(methods: dict[str, dict]) -> tuple[str, dict] | None:
    """The classical method with the highest PSNR (``(name, scores)``), None when there is none."""
    present = [(name, methods[name]) for name in CLASSICAL if name in methods]
    return max(present, key=lambda item: item[1]["psnr"]) if present else None


def grid_image(
    pairs: list[tuple[np.ndarray, np.ndarray]], outputs: dict[str, list[np.ndarray]]
) -> np.ndarray:
    """Rows of ``clean | degraded | each method`` for the first :data:`GRID_ROWS` cases."""
    rows = []
    for i, (clean, degraded) in enumerate(pairs[:GRID_ROWS]):
        tiles = [clean, degraded] + [images[i] for images in outputs.values()]
        rows.append(
            np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], axis=1)
        )
    return np.concatenate(rows, axis=0)


def _markdown(protocol: EvalProtocol, methods: dict[str, dict]) -> str:
    split_name = "held-out split" if protocol.held_out_only else "all photos"
    scratches = (
        ("on (HR patch-attention mapping)" if protocol.hr else "on") if protocol.with_scratch else "off"
    )
    lines = [
        f"Clean photos: `{protocol.clean_dir}` ({split_name}), {protocol.size}x{protocol.size} centre crops, "
        f"seed {protocol.seed}, scratches {scratches}.",
        "",
        "| method | PSNR (dB) | SSIM |" + (" mask F1 |" if protocol.with_scratch else ""),
        "|---|---|---|" + ("---|" if protocol.with_scratch else ""),
    ]
    for name, scores in methods.items():
        f1 = f" {scores['mask_f1']:.3f} |" if "mask_f1" in scores else (" |" if protocol.with_scratch else "")
        lines.append(f"| {name} | {scores['psnr']:.2f} | {scores['ssim']:.4f} |{f1}")
    best = best_classical(methods)
    if best is not None and "latent-restore" in methods:
        ours = methods["latent-restore"]
        lines += [
            "",
            f"latent-restore against the best classical method ({best[0]}): "
            f"{ours['psnr'] - best[1]['psnr']:+.2f} dB PSNR, {ours['ssim'] - best[1]['ssim']:+.4f} SSIM.",
        ]
    return "\n".join(lines) + "\n"


def evaluate(
    pipeline: RestorationPipeline,
    protocol: EvalProtocol,
    out_dir: str | os.PathLike[str],
    extra_methods: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    show_progress: bool = True,
    inception_weights: str | os.PathLike[str] | None = None,
) -> dict:
    """Run the protocol; write ``results.json``, ``results.md`` and ``grid.png`` into ``out_dir``.

    Args:
        pipeline: the restoration pipeline to score as ``latent-restore``.
        protocol: data, crop size, seed and whether scratches are added.
        out_dir: where the reports go.
        extra_methods: more restorers (uint8 image in, uint8 image out) reported beside ours.
        inception_weights: a torchvision Inception-v3 state dict; when given, each method's FID
            against the clean crops is reported too.

    Returns:
        The content of ``results.json``.
    """
    cases = build_cases(protocol)
    options = RestorationOptions(with_scratch=protocol.with_scratch, hr=protocol.hr, faces=False)
    restorers: dict[str, Callable[[EvalCase], np.ndarray]] = {"input": lambda c: c.degraded}
    predicted_masks: dict[str, np.ndarray] = {}

    def ours(case: EvalCase) -> np.ndarray:
        result = pipeline(case.degraded, options)
        if result.scratch_mask is not None:
            predicted_masks[case.name] = result.scratch_mask
        return quantize(result.image)

    restorers["nlmeans"] = lambda c: nlmeans(c.degraded)
    restorers["nlmeans+levels"] = lambda c: auto_levels(nlmeans(c.degraded))
    if protocol.with_scratch:
        restorers["nlmeans+inpaint"] = lambda c: nlmeans_inpaint(c.degraded, predicted_masks[c.name])
        restorers["nlmeans+inpaint+levels"] = lambda c: auto_levels(
            nlmeans_inpaint(c.degraded, predicted_masks[c.name])
        )
    for name, fn in (extra_methods or {}).items():
        restorers[name] = lambda c, fn=fn: fn(c.degraded)
    restorers = {"input": restorers.pop("input"), "latent-restore": ours, **restorers}

    scores = {name: MethodScores() for name in restorers}
    if protocol.with_scratch:
        scores["latent-restore"].mask = MaskCounts()
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in restorers if name != "input"}
    for case in tqdm(cases, desc="eval", unit="photo", disable=not show_progress):
        for name, restore in restorers.items():
            image = restore(case)
            scores[name].per_image[case.name] = {
                "psnr": psnr(case.clean, image),
                "ssim": ssim(case.clean, image),
            }
            if name in outputs:
                outputs[name].append(image)
        if protocol.with_scratch:
            scores["latent-restore"].mask.add(case.mask, predicted_masks[case.name])
    methods = {name: s.summary() for name, s in scores.items()}
    if inception_weights is not None:
        from latent_restore.metrics import InceptionFeatures, feature_statistics, frechet_distance

        extractor = InceptionFeatures(inception_weights)
        reference = feature_statistics(extractor([c.clean for c in cases]))
        for name in methods:
            images = [c.degraded for c in cases] if name == "input" else outputs[name]
            methods[name]["fid"] = frechet_distance(*reference, *feature_statistics(extractor(images)))
    results = {"protocol": asdict(protocol), "num_images": len(cases), "methods": methods}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    write_atomic(out / "results.md", _markdown(protocol, methods).encode())
    write_atomic(out / "grid.png", encode_png(grid_image([(c.clean, c.degraded) for c in cases], outputs)))
    for name, s in methods.items():
        logger.info(
            "%-16s PSNR %.2f dB  SSIM %.4f%s",
            name,
            s["psnr"],
            s["ssim"],
            f"  mask F1 {s['mask_f1']:.3f}" if "mask_f1" in s else "",
        )
    return results
