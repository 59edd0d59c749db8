"""``latent-restore eval --faces``: score the face stage alone on aligned, reproducibly degraded faces.

Faces are found and aligned in each photo exactly as the pipeline does before its generator runs
(our detector, the released 5-point template, the generator's ``load_size``), so the score is that
of the crops the face stage really sees. Each aligned clean face is degraded with the face part of
the synthetic mix (:func:`face_enhance.data.face_degradation`, seeded from ``(seed, index)``), then
restored by the face stage alone (the generator, then the colour matching to the crop it replaces
that the pipeline's warp-back applies) and by the classical baselines. Besides PSNR and SSIM against
the clean face, a sharpness ratio (mean gradient magnitude of the result over the clean face's, 1.0
= as sharp as the original) shows whether a method restores detail or only smooths: it needs no
identity model, and a smoothing filter scores well below 1.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from latent_restore.core.atomic import write_atomic
from latent_restore.core.data import load_rgb, sample_rng
from latent_restore.core.degradations import sample_degradation, with_defects
from latent_restore.core.imaging import encode_png
from latent_restore.evaluation import auto_levels, best_classical, evaluation_photos, grid_image, nlmeans
from latent_restore.metrics import psnr, ssim

logger = logging.getLogger(__name__)


@dataclass
class FaceEvalProtocol:
    """Everything that defines a face evaluation run (stored in ``results.json``)."""

    faces_dir: str
    seed: int = 0
    held_out_only: bool = True
    face_size: int = 0
    degradation: str = "face_degradation(): blur, noise, grain, resampling, JPEG"
    alignment: str = "dlib HOG + 68 landmarks, released 5-point template, border padded by 25 %"


@dataclass
class FaceCase:
    name: str
    clean: np.ndarray
    degraded: np.ndarray


def sharpness(image: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the luma, in 8-bit levels per pixel."""
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.sqrt(gx * gx + gy * gy).mean())


def build_face_cases(protocol: FaceEvalProtocol, detector: object) -> tuple[list[FaceCase], int]:
    """Aligned clean faces and their degraded copies, and the number of photos without a face.

    The same protocol always gives the same cases: faces are numbered in file and detector order,
    and each face is degraded with the generator seeded from ``(seed, 0, i)``, ``i`` counting draws.
    """
    from face_enhance.crops import aligned_faces
    from face_enhance.data import face_degradation

    root = Path(protocol.faces_dir)
    paths = evaluation_photos(root, protocol.held_out_only)
    config = with_defects(face_degradation(), False)
    cases: list[FaceCase] = []
    missed = draws = 0
    for path in paths:
        faces = aligned_faces(load_rgb(path), detector, protocol.face_size)
        missed += not faces
        for k, clean in enumerate(faces):
            # A draw can skip every op; such a face measures nothing (infinite PSNR), so it is drawn
            # again with the next index.
            degraded = clean
            while np.array_equal(degraded, clean):
                degraded = sample_degradation(clean, sample_rng(protocol.seed, 0, draws), config).image
                draws += 1
            cases.append(FaceCase(f"{path.relative_to(root).as_posix()}#{k}", clean, degraded))
    if not cases:
        raise FileNotFoundError(f"no face was found in the {len(paths)} photos under {root}")
    return cases, missed


def _markdown(protocol: FaceEvalProtocol, num_faces: int, methods: dict[str, dict]) -> str:
    split_name = "held-out split" if protocol.held_out_only else "all photos"
    lines = [
        f"Faces: `{protocol.faces_dir}` ({split_name}), {num_faces} aligned {protocol.face_size}x"
        f"{protocol.face_size} faces, seed {protocol.seed}, face degradation mix.",
        "",
        "| method | PSNR (dB) | SSIM | sharpness (1 = clean) |",
        "|---|---|---|---|",
    ]
    for name, s in methods.items():
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['sharpness']:.3f} |")
    best = best_classical(methods)
    if best is not None and "latent-restore" in methods:
        ours = methods["latent-restore"]
        lines += [
            "",
            f"Face stage against the degraded input: {ours['psnr'] - methods['input']['psnr']:+.2f} dB PSNR; "
            f"against the best classical method ({best[0]}): {ours['psnr'] - best[1]['psnr']:+.2f} dB PSNR, "
            f"{ours['ssim'] - best[1]['ssim']:+.4f} SSIM.",
        ]
    return "\n".join(lines) + "\n"


def evaluate_faces(
    generator: nn.Module,
    protocol: FaceEvalProtocol,
    out_dir: str | os.PathLike[str],
    show_progress: bool = True,
) -> dict:
    """Run the protocol with ``generator`` as the face stage; write ``results.json``, ``results.md``
    and ``grid.png`` into ``out_dir``.

    Args:
        generator: a face generator (its ``config.load_size`` sets the crop side).
        protocol: data, seed and split; ``face_size`` is filled in from the generator.
        out_dir: where the reports go.

    Returns:
        The content of ``results.json`` (``methods`` -> name -> ``psnr``, ``ssim``, ``sharpness``).
    """
    from face_enhance.blending import match_histograms
    from face_enhance.enhancer import FaceEnhancer

    enhancer = FaceEnhancer(generator)
    protocol.face_size = enhancer.face_size
    cases, missed = build_face_cases(protocol, enhancer.detector)
    restorers: dict[str, Callable[[FaceCase], np.ndarray]] = {
        "input": lambda c: c.degraded,
        "latent-restore": lambda c: match_histograms(enhancer.enhance_crops([c.degraded])[0], c.degraded),
        "nlmeans": lambda c: nlmeans(c.degraded),
        "nlmeans+levels": lambda c: auto_levels(nlmeans(c.degraded)),
    }
    per_image: dict[str, dict[str, dict[str, float]]] = {name: {} for name in restorers}
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in restorers if name != "input"}
    for case in tqdm(cases, desc="eval faces", unit="face", disable=not show_progress):
        reference = sharpness(case.clean)
        for name, restore in restorers.items():
            image = restore(case)
            per_image[name][case.name] = {
                "psnr": psnr(case.clean, image),
                "ssim": ssim(case.clean, image),
                "sharpness": sharpness(image) / max(reference, 1e-6),
            }
            if name in outputs:
                outputs[name].append(image)
    methods = {
        name: {
            **{
                key: float(np.mean([v[key] for v in scores.values()]))
                for key in ("psnr", "ssim", "sharpness")
            },
            "per_image": scores,
        }
        for name, scores in per_image.items()
    }
    results = {
        "protocol": asdict(protocol),
        "num_images": len(cases),
        "photos_without_face": missed,
        "methods": methods,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    write_atomic(out / "results.md", _markdown(protocol, len(cases), methods).encode())
    write_atomic(out / "grid.png", encode_png(grid_image([(c.clean, c.degraded) for c in cases], outputs)))
    logger.info("%d faces from %s (%d photos without a face)", len(cases), protocol.faces_dir, missed)
    return results
