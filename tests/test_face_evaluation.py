"""`latent-restore eval --faces`: aligned, reproducibly degraded faces scored for the face stage alone."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import DATA, needs_shared

from face_enhance.generator import FaceGenerator, FaceGeneratorConfig
from latent_restore.cli import main
from latent_restore.core.checkpoint import save_component
from latent_restore.face_evaluation import sharpness

FACES = DATA / "faces" / "kair_real_faces"


def tiny_face_weights(directory: Path) -> Path:
    torch.manual_seed(0)
    generator = FaceGenerator(
        FaceGeneratorConfig(load_size=64, base_channels=4, spade_hidden_channels=4, num_upsamples=3)
    )
    save_component(generator.eval(), directory / "face_256")
    return directory


def test_sharpness_falls_with_blur_and_is_zero_on_flat_images() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(image, (0, 0), 2.0)
    assert sharpness(blurred) < 0.5 * sharpness(image)
    assert sharpness(np.full((32, 32, 3), 128, np.uint8)) == 0.0


@needs_shared("data/faces/kair_real_faces")
def test_eval_faces_scores_every_method_reproducibly(tmp_path: Path) -> None:
    weights = tiny_face_weights(tmp_path / "weights")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["eval", "--faces", str(FACES), "--all", "--weights", str(weights), "--out", str(out)]
        assert main([*args, "--quiet"]) == 0
        runs.append(json.loads((out / "results.json").read_text()))
        assert (out / "grid.png").stat().st_size > 0
        assert "| latent-restore |" in (out / "results.md").read_text()
    first, second = runs
    assert first["protocol"]["face_size"] == 64
    assert first["num_images"] >= 3, "the detector should find the faces of the KAIR crops"
    assert set(first["methods"]) == {"input", "latent-restore", "nlmeans", "nlmeans+levels"}
    for scores in first["methods"].values():
        assert set(scores) >= {"psnr", "ssim", "sharpness"}
        assert len(scores["per_image"]) == first["num_images"]
    assert first["methods"] == second["methods"], "the same seed must give the same cases and scores"
    # A random generator is far from the clean faces; NL-means smooths: both are visible in the scores.
    assert first["methods"]["latent-restore"]["psnr"] < first["methods"]["input"]["psnr"]
    assert first["methods"]["nlmeans"]["sharpness"] < first["methods"]["input"]["sharpness"]


@needs_shared("data/faces/kair_real_faces")
def test_eval_faces_seed_changes_the_degradation(tmp_path: Path) -> None:
    weights = tiny_face_weights(tmp_path / "weights")
    inputs = []
    for seed in ("0", "1"):
        out = tmp_path / seed
        argv = [
            "eval",
            "--faces",
            str(FACES),
            "--all",
            "--seed",
            seed,
            "--weights",
            str(weights),
            "--out",
            str(out),
        ]
        assert main([*argv, "--quiet"]) == 0
        inputs.append(json.loads((out / "results.json").read_text())["methods"]["input"]["psnr"])
    assert inputs[0] != inputs[1]


def test_eval_needs_exactly_one_of_clean_and_faces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["eval", "--out", str(tmp_path)],
        ["eval", "--clean", "a", "--faces", "b", "--out", str(tmp_path)],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "--faces" in capsys.readouterr().err


def test_eval_faces_refuses_weights_without_a_face_model(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    argv = [
        "eval",
        "--faces",
        str(tmp_path),
        "--weights",
        str(tmp_path / "weights"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "o").exists()
