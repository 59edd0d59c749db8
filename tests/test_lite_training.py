"""The options the lite default weights are trained with: held-out exclusion and non-adversarial losses.

The held-out split must never reach a training set that asks for its exclusion, and the
reconstruction-only loss settings must leave the discriminators untouched (they are not run), while
the paper's recipe stays the default.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import DATA, REPO
from PIL import Image

from latent_restore.core.config import load_config
from latent_restore.core.data import CleanImageDataset, training_images
from latent_restore.core.splits import is_held_out
from stage1_vae.data import DomainADataset
from stage1_vae.training import NoisyVAE, VAETrainingConfig
from stage1_vae.training import build_task as build_vae_task
from stage1_vae.vae import VAE, VAEConfig
from stage2_mapping.data import MappingPairDataset, ScratchDetectionDataset
from stage2_mapping.training import MappingTrainingConfig, ScratchTrainingConfig, build_mapping_task

LITE = REPO / "scripts" / "configs" / "lite"


def _photo_tree(root: Path, count: int = 30) -> list[Path]:
    """``count`` distinct tiny photos in two sub-folders; enough that some are held out."""
    paths = []
    for i in range(count):
        folder = root / ("set_a" if i % 2 else "set_b")
        folder.mkdir(parents=True, exist_ok=True)
        value = np.full((24, 24, 3), (i * 8) % 256, dtype=np.uint8)
        path = folder / f"photo_{i:02d}.png"
        Image.fromarray(value).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def photo_root(tmp_path: Path) -> Path:
    root = tmp_path / "clean"
    _photo_tree(root)
    return root


def _held_out(root: Path) -> set[Path]:
    return {p for p in training_images(root) if is_held_out(p.relative_to(root))}


def test_training_images_drop_exactly_the_held_out_photos(photo_root: Path) -> None:
    held = _held_out(photo_root)
    assert held, "fixture too small: no photo is held out"
    kept = training_images(photo_root, exclude_held_out=True)
    assert set(kept).isdisjoint(held)
    assert set(kept) | held == set(training_images(photo_root))
    assert set(training_images(photo_root, exclude_held_out=False)) >= held


def test_datasets_with_exclusion_never_load_held_out_photos(photo_root: Path, tmp_path: Path) -> None:
    held = _held_out(photo_root)
    real = tmp_path / "real"
    real.mkdir()
    Image.fromarray(np.zeros((24, 24, 3), dtype=np.uint8)).save(real / "old.png")
    datasets = [
        CleanImageDataset(photo_root, crop_size=16, exclude_held_out=True),
        DomainADataset(photo_root, [real], crop_size=16, exclude_held_out=True),
        MappingPairDataset(photo_root, crop_size=16, exclude_held_out=True),
        ScratchDetectionDataset(photo_root, crop_size=16, exclude_held_out=True),
    ]
    for dataset in datasets:
        pool = dataset.clean if isinstance(dataset, DomainADataset) else dataset.pool
        assert set(pool.paths).isdisjoint(held)
        assert len(pool.paths) == len(training_images(photo_root)) - len(held)
        for index in range(len(dataset)):
            dataset[index]
        assert set(pool.paths).isdisjoint(held)


@pytest.mark.skipif(not (DATA / "clean").is_dir(), reason="shared sample data missing")
def test_shared_clean_split_matches_the_evaluation_split() -> None:
    """Training on the ``clean`` root with exclusion leaves exactly eval's held-out photos out."""
    from latent_restore.evaluation import EvalProtocol, build_cases

    root = DATA / "clean"
    kept = {p.relative_to(root).as_posix() for p in training_images(root, exclude_held_out=True)}
    evaluated = {case.name for case in build_cases(EvalProtocol(str(root), size=32))}
    assert evaluated and kept.isdisjoint(evaluated)
    assert len(kept) + len(evaluated) == len(training_images(root))


def test_noisy_vae_without_noise_is_deterministic() -> None:
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_channels=4, latent_channels=4, num_res_blocks=1))
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    _, first = NoisyVAE(vae, noise_std=0.0)(image)
    _, second = NoisyVAE(vae, noise_std=0.0)(image)
    assert torch.equal(first, second) and torch.allclose(first, vae(image))
    _, noisy = NoisyVAE(vae)(image)
    assert not torch.allclose(noisy, first)


@pytest.mark.parametrize("kind", ["vae", "mapping"])
def test_norm_none_round_trips_and_keeps_brightness(kind: str, tmp_path: Path) -> None:
    """``norm: none`` is stored in config.json; without it a constant offset of the input is lost."""
    from latent_restore.core.checkpoint import load_component, save_component
    from latent_restore.core.layers import Norm
    from stage2_mapping.mapping import MappingConfig, MappingNetwork

    torch.manual_seed(0)
    if kind == "vae":
        net = VAE(VAEConfig(base_channels=4, latent_channels=4, num_res_blocks=1, norm="none")).eval()
        x = torch.rand(1, 3, 16, 16) * 0.5
    else:
        config = MappingConfig(latent_channels=4, base_channels=4, max_channels=8, num_levels=1, num_blocks=1)
        net = MappingNetwork(dataclasses.replace(config, norm="none")).eval()
        x = torch.rand(1, 4, 8, 8)
    assert net.config.norm is Norm.NONE
    loaded = load_component(save_component(net, tmp_path / kind)).eval()
    assert loaded.config.norm is Norm.NONE
    with torch.no_grad():
        assert torch.allclose(net(x), loaded(x))
        assert not torch.allclose(net(x), net(x + 0.25), atol=1e-4)


def _run_step(task, batch: dict) -> dict[str, torch.Tensor]:
    """One ``task.step`` outside the loop: the context only needs the models and ``backward``."""
    ctx = SimpleNamespace(models=task.models, backward=lambda loss: loss.backward())
    return task.step(batch, ctx)


@pytest.mark.parametrize("domain", ["A", "B"])
def test_vae_reconstruction_only_skips_the_discriminators(domain: str) -> None:
    config = load_config(
        VAETrainingConfig,
        None,
        [
            f"domain={domain}",
            "model={base_channels: 4, latent_channels: 4, num_res_blocks: 1}",
            "discriminator={base_channels: 4, num_layers: 2}",
            "latent_discriminator={base_channels: 4, num_layers: 2, num_scales: 1}",
            "loss={gan_weight: 0, feat_weight: 0, latent_gan_weight: 0, l1_weight: 1, latent_noise_std: 0}",
            "data.clean_dirs=[unused]",
        ],
    )
    task = build_vae_task(config, torch.device("cpu"))
    batch = {"image": torch.rand(2, 3, 16, 16) * 2 - 1, "is_real": torch.tensor([True, False])}
    logs = _run_step(task, batch)
    assert set(logs) == {"g/kl", "g/l1", "g/total", "metric/recon_l1"}
    assert all(p.grad is not None for p in task.models["generator"].parameters())
    for name, model in task.models.items():
        if name != "generator":
            assert all(p.grad is None for p in model.parameters()), name


def test_mapping_image_l1_only_skips_the_discriminator(tmp_path: Path) -> None:
    from latent_restore.core.checkpoint import save_component

    vae_config = VAEConfig(base_channels=4, latent_channels=4, num_res_blocks=1)
    vae_a = save_component(VAE(vae_config), tmp_path / "vae_a")
    vae_b = save_component(VAE(vae_config), tmp_path / "vae_b")
    config = load_config(
        MappingTrainingConfig,
        None,
        [
            f"vae_a={json.dumps(str(vae_a))}",
            f"vae_b={json.dumps(str(vae_b))}",
            "model={latent_channels: 4, base_channels: 4, max_channels: 8, num_levels: 2, num_blocks: 1}",
            "discriminator={base_channels: 4, num_layers: 2}",
            "loss={gan_weight: 0, feat_weight: 0, l1_weight: 10, latent_weight: 1, ttur: false}",
        ],
    )
    task = build_mapping_task(config, torch.device("cpu"))
    batch = {
        "degraded": torch.rand(2, 3, 16, 16) * 2 - 1,
        "clean": torch.rand(2, 3, 16, 16) * 2 - 1,
        "mask": torch.zeros(2, 1, 16, 16),
    }
    logs = _run_step(task, batch)
    assert "d/image" not in logs and "g/gan" not in logs and "g/l1" in logs
    assert all(p.grad is not None for p in task.models["mapping"].parameters())
    assert all(p.grad is None for p in task.models["discriminator"].parameters())


def test_default_recipe_is_unchanged() -> None:
    vae, mapping = VAETrainingConfig(), MappingTrainingConfig()
    assert vae.loss.latent_noise_std == 1.0 and vae.loss.adversarial and not vae.data.exclude_held_out
    assert mapping.loss.adversarial and not mapping.data.exclude_held_out
    assert not ScratchTrainingConfig().data.exclude_held_out


@pytest.mark.parametrize("name", sorted(p.name for p in LITE.glob("*.yaml")))
def test_lite_configs_resolve_and_exclude_held_out(name: str) -> None:
    from face_enhance.training import FaceTrainingConfig
    from latent_restore.colorize.training import ColorizeTrainingConfig
    from latent_restore.pix2pix.training import Pix2PixTrainingConfig

    classes = {
        "vae": VAETrainingConfig,
        "mapping": MappingTrainingConfig,
        "scratch": ScratchTrainingConfig,
        "face": FaceTrainingConfig,
        "pix2pix": Pix2PixTrainingConfig,
        "colorize": ColorizeTrainingConfig,
    }
    config = load_config(classes[name.split("_")[0].split(".")[0]], LITE / name)
    if hasattr(config.data, "exclude_held_out"):
        assert config.data.exclude_held_out
        # The evaluation root itself (the held-out rule hashes paths relative to it); more sets may follow.
        assert config.data.clean_dirs[0] == "../shared/data/clean"


def test_mapping_can_fine_tune_the_decoder(tmp_path: Path) -> None:
    from latent_restore.core.checkpoint import save_component

    vae_config = VAEConfig(base_channels=4, latent_channels=4, num_res_blocks=1)
    vae_a = save_component(VAE(vae_config), tmp_path / "vae_a")
    vae_b = save_component(VAE(vae_config), tmp_path / "vae_b")
    overrides = [
        f"vae_a={json.dumps(str(vae_a))}",
        f"vae_b={json.dumps(str(vae_b))}",
        "model={latent_channels: 4, base_channels: 4, max_channels: 8, num_levels: 2, num_blocks: 1}",
        "loss={gan_weight: 0, feat_weight: 0, l1_weight: 10, ttur: false}",
    ]
    frozen_task = build_mapping_task(load_config(MappingTrainingConfig, None, overrides), torch.device("cpu"))
    assert set(frozen_task.final_weights(frozen_task.models)) == {"mapping_quality"}
    config = load_config(MappingTrainingConfig, None, [*overrides, "decoder_component=vae_b_quality"])
    task = build_mapping_task(config, torch.device("cpu"))
    batch = {
        "degraded": torch.rand(2, 3, 16, 16) * 2 - 1,
        "clean": torch.rand(2, 3, 16, 16) * 2 - 1,
        "mask": torch.zeros(2, 1, 16, 16),
    }
    _run_step(task, batch)
    assert all(p.grad is not None for p in task.vae_b.decoder.parameters())
    assert all(p.grad is None for p in task.vae_b.encoder.parameters())
    assert all(p.grad is None for p in task.vae_a.parameters())
    weights = task.final_weights(task.models)
    assert set(weights) == {"mapping_quality", "vae_b_quality"} and weights["vae_b_quality"] is task.vae_b
    both = load_config(
        MappingTrainingConfig,
        None,
        [*overrides, "decoder_component=vae_b_quality", "encoder_component=vae_a"],
    )
    task = build_mapping_task(both, torch.device("cpu"))
    _run_step(task, batch)
    assert all(p.grad is not None for p in task.vae_a.encoder.parameters())
    assert all(p.grad is None for p in task.vae_a.decoder.parameters())
    assert set(task.final_weights(task.models)) == {"mapping_quality", "vae_b_quality", "vae_a"}
    with pytest.raises(Exception, match="decoder_component"):
        build_mapping_task(
            load_config(MappingTrainingConfig, None, [*overrides, "decoder_component=vae_a"]),
            torch.device("cpu"),
        )
