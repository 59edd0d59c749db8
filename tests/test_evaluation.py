"""``latent-restore eval`` on a small set, and the metrics it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import DATA, needs_shared

from latent_restore.cli import main
from latent_restore.core.splits import is_held_out, split
from latent_restore.evaluation import auto_levels, best_classical, nlmeans
from latent_restore.metrics import MaskCounts, feature_statistics, frechet_distance, psnr


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    if not (DATA / "clean" / "Set5").is_dir():
        pytest.skip("needs ../shared/data/clean/Set5")
    folder = tmp_path_factory.mktemp("clean")
    for path in sorted((DATA / "clean" / "Set5").iterdir())[:3]:
        (folder / path.name).symlink_to(path)
    return folder


@pytest.mark.parametrize("flags", [[], ["--with-scratch"], ["--with-scratch", "--hr"]])
def test_small_evaluation_runs_and_reports(tmp_path, tiny_weights, clean_dir, flags) -> None:
    scratch = "--with-scratch" in flags
    args = [
        "eval",
        "--quiet",
        "--clean",
        str(clean_dir),
        "--all",
        "--size",
        "48",
        "--weights",
        str(tiny_weights),
    ]
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), *flags]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["size"] == 48 and results["num_images"] == 3
    assert results["protocol"]["hr"] == ("--hr" in flags)
    expected = {"input", "latent-restore", "nlmeans", "nlmeans+levels"}
    expected |= {"nlmeans+inpaint", "nlmeans+inpaint+levels"} if scratch else set()
    assert set(results["methods"]) == expected
    for scores in results["methods"].values():
        assert len(scores["per_image"]) == 3
        assert np.isclose(scores["psnr"], np.mean([v["psnr"] for v in scores["per_image"].values()]))
        assert 0 < scores["ssim"] <= 1
    assert ("mask_f1" in results["methods"]["latent-restore"]) == scratch
    report = (out / "results.md").read_text()
    assert "| latent-restore |" in report and ("HR patch-attention" in report) == ("--hr" in flags)
    assert (out / "grid.png").stat().st_size > 0
    again = tmp_path / "again"
    main([*args, "--out", str(again), *flags])
    assert json.loads((again / "results.json").read_text())["methods"]["input"] == results["methods"]["input"]


def test_hr_evaluation_needs_scratches(tmp_path, tiny_weights, clean_dir) -> None:
    args = ["eval", "--quiet", "--clean", str(clean_dir), "--weights", str(tiny_weights), "--hr"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_noise_estimate() -> None:
    from latent_restore.evaluation import noise_sigma

    rng = np.random.default_rng(0)
    flat = np.full((128, 128, 3), 128.0)
    noisy = np.clip(flat + rng.normal(0, 10, (128, 128, 1)), 0, 255).astype(np.uint8)
    assert noise_sigma(noisy) == pytest.approx(10, rel=0.1)
    assert noise_sigma(flat.astype(np.uint8)) == 0.0


def test_nlmeans_baseline_removes_noise() -> None:
    rng = np.random.default_rng(0)
    clean = np.full((64, 64, 3), 120, np.uint8)
    clean[16:48, 16:48] = 200
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    assert psnr(clean, nlmeans(noisy)) > psnr(clean, noisy) + 5


def test_frechet_distance_against_eigenvalue_formula() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 0.3
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    trace_sqrt = np.sum(np.sqrt(scipy.linalg.eigvals(s1 @ s2).real.clip(min=0)))
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_mask_f1() -> None:
    counts = MaskCounts()
    truth = np.zeros((4, 4), bool)
    truth[0] = True
    predicted = np.zeros((4, 4), bool)
    predicted[0, :2] = predicted[1, 0] = True
    counts.add(truth, predicted)
    assert counts.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


@needs_shared("data/clean")
def test_held_out_split_is_fixed_and_disjoint() -> None:
    from latent_restore.core.data import list_images

    root = DATA / "clean"
    train, held = split(list_images(root), root)
    assert held and train and not set(train) & set(held)
    assert all(is_held_out(p.relative_to(root)) for p in held)
    assert is_held_out("Set5/head.bmp") and not is_held_out("Set5/baby.bmp")


@pytest.mark.slow
def test_inception_features_load_user_weights(tmp_path) -> None:
    from torchvision.models import inception_v3

    from latent_restore.metrics import InceptionFeatures

    torch.manual_seed(0)
    torch.save(
        inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(),
        tmp_path / "inception.pth",
    )
    extractor = InceptionFeatures(tmp_path / "inception.pth")
    images = [np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8) for i in range(3)]
    features = extractor(images, batch_size=2)
    assert features.shape == (3, 2048) and np.isfinite(features).all()


def test_auto_levels_stretches_each_channel_and_best_classical_picks_the_best() -> None:
    rng = np.random.default_rng(0)
    faded = (rng.random((32, 32, 3)) * 100 + 80).astype(np.uint8)
    faded[..., 2] //= 2
    stretched = auto_levels(faded)
    for c in range(3):
        assert stretched[..., c].min() <= 2 and stretched[..., c].max() >= 253
    flat = np.full((8, 8, 3), 128, np.uint8)
    assert np.array_equal(auto_levels(flat), flat)
    methods = {"input": {"psnr": 20.0}, "nlmeans": {"psnr": 21.0}, "nlmeans+levels": {"psnr": 22.5}}
    assert best_classical(methods)[0] == "nlmeans+levels"
    assert best_classical({"input": {"psnr": 1.0}}) is None
