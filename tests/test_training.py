"""The shared training loop and every stage's task, with tiny configs on the shared sample data (CPU).

Each stage trains for a few dozen iterations: losses stay finite and the reconstruction-type loss
goes down, a checkpoint and the final weights are written, and the weights load and run. Resume is
tested for real: a training process is SIGKILLed after a checkpoint, resumed with ``--resume auto``
and must end with the weights (and per-step losses) of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from helpers import CLEAN_DIRS, DATA, REPO, needs_data
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from latent_restore.core.checkpoint import load_component, save_component
from latent_restore.core.colour import LUMA
from latent_restore.core.config import ConfigError, load_config
from latent_restore.core.discriminators import MultiScaleDiscriminator, split_batch
from latent_restore.core.dist import ShardedSampler
from latent_restore.core.losses import VGG19Features, build_vgg_loss, feature_matching_loss, lsgan_loss
from latent_restore.core.training import (
    StepContext,
    TrainConfig,
    Trainer,
    TrainTask,
    launch,
    lr_factor,
)
from latent_restore.weights import Component
from stage1_vae.losses import balanced_masks, latent_discriminator_loss, latent_generator_loss
from stage1_vae.training import VAETrainingConfig
from stage1_vae.training import build_task as build_vae_task
from stage1_vae.vae import VAE, VAEConfig
from stage2_mapping.losses import scratch_detection_loss, soft_dice_loss
from stage2_mapping.mapping import MappingConfig, MappingNetwork
from stage2_mapping.scratch_detector import ScratchDetector, ScratchDetectorConfig, rgb_detector_from_gray
from stage2_mapping.training import (
    MappingTrainingConfig,
    MappingVariant,
    ScratchTrainingConfig,
    build_mapping,
    build_mapping_task,
    build_scratch_task,
    warm_start,
)

TINY = REPO / "scripts" / "configs" / "tiny"
pytestmark = pytest.mark.usefixtures("restore_torch_state")
SMALL_MAPPING = {
    "latent_channels": 8,
    "base_channels": 8,
    "max_channels": 16,
    "num_levels": 1,
    "num_blocks": 2,
}
"""A one-level mapping small enough to warm-start and train in a test."""
FULL = REPO / "scripts" / "configs" / "full"
FACE_DIRS = [str(DATA / "faces" / d) for d in ("kair_real_faces", "gfpgan_cropped", "diffbir_aligned")]
REAL_DIRS = [str(DATA / "real_old")]


def data_overrides(clean: bool = True, real: bool = False, faces: bool = False) -> list[str]:
    """Absolute data folders, so the tests do not depend on the working directory."""
    out = []
    if clean:
        out.append(f"data.clean_dirs={json.dumps(CLEAN_DIRS)}")
    if real:
        out.append(f"data.real_dirs={json.dumps(REAL_DIRS)}")
    if faces:
        out.append(f"data.face_dirs={json.dumps(FACE_DIRS)}")
    return out


def read_scalars(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "logs" / "scalars.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_vaes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny VAE components (8 latent channels) standing in for trained VAE A and B."""
    base = tmp_path_factory.mktemp("vaes")
    config = VAEConfig(base_channels=8, latent_channels=8, num_downsamples=2, num_res_blocks=1)
    torch.manual_seed(1)
    vae_a = save_component(VAE(config), base / "vae_a")
    vae_b = save_component(VAE(config), base / "vae_b")
    return vae_a, vae_b


# --- config --------------------------------------------------------------------------------------


def test_load_config_file_then_overrides_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("domain: B\noptim: {lr: 2e-4}\ntrain: {total_steps: 10, decay_steps: 5}\n")
    config = load_config(
        VAETrainingConfig,
        path,
        [
            "train.batch_size=3",
            "optim.lr=1e-3",
            "data.clean_dirs=[a, b]",
            "discriminator.spectral_norm=true",
            "train.precision=bf16",
            "component=vae_b_scratch",
            "train.batch_size=5",
        ],
    )
    assert config.domain.value == "B"
    assert config.optim.lr == pytest.approx(1e-3)  # "2e-4"-style exponents parse as floats
    assert config.train.batch_size == 5  # the last override wins
    assert config.train.total_steps == 10 and config.model == VAEConfig()
    assert config.data.clean_dirs == ["a", "b"]
    assert config.discriminator.spectral_norm is True
    assert config.train.precision.value == "bf16"
    assert config.component == Component.VAE_B_SCRATCH.value


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.bogus=1"], "unknown keys"),
        (["optimiser.lr=1"], "unknown keys"),
        (["train.batch_size=two"], "expected int"),
        (["train.total_steps"], "a.b.c=value"),
        (["train.total_steps.x=1"], "not a section"),
        (["domain=C"], "is not one of"),
        (["train.decay_steps=300000"], "decay_steps"),
    ],
)
def test_load_config_rejects(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(VAETrainingConfig, TINY / "vae_a.yaml", overrides)


def test_load_config_rejects_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {total_step: 10}\n")
    with pytest.raises(ConfigError, match="total_step"):
        load_config(VAETrainingConfig, path)


@pytest.fixture
def _keep_logging() -> Iterator[None]:
    """Entry points configure the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_keep_logging")
def test_entry_point_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import train_vae
    finally:
        sys.path.remove(str(REPO / "scripts"))
    with pytest.raises(SystemExit) as exc:
        train_vae.main(
            ["--config", str(TINY / "vae_a.yaml"), "--set", "loss.vgg=1", "--out", str(tmp_path / "r")]
        )
    assert exc.value.code == 2
    assert "unknown keys ['vgg']" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in FULL.glob("*.yaml")))
def test_full_configs_resolve(name: str) -> None:
    from latent_restore.colorize.training import ColorizeTrainingConfig
    from latent_restore.pix2pix.training import Pix2PixTrainingConfig

    cls = {
        "vae": VAETrainingConfig,
        "mapping": MappingTrainingConfig,
        "scratch": ScratchTrainingConfig,
        "pix2pix": Pix2PixTrainingConfig,
        "colorize": ColorizeTrainingConfig,
    }.get(name.split("_")[0].split(".")[0])
    if cls is None:
        from face_enhance.training import FaceTrainingConfig

        cls = FaceTrainingConfig
    config = load_config(cls, FULL / name)
    effective = config.train.batch_size * config.train.grad_accum
    assert config.train.decay_steps < config.train.total_steps and effective >= 16


def test_full_configs_reach_the_released_batch_sizes() -> None:
    batches = {
        name: load_config(cls, FULL / f"{name}.yaml").train
        for name, cls in [
            ("vae_a", VAETrainingConfig),
            ("vae_b", VAETrainingConfig),
            ("mapping_quality", MappingTrainingConfig),
            ("mapping_scratch", MappingTrainingConfig),
            ("mapping_hr", MappingTrainingConfig),
        ]
    }
    effective = {name: t.batch_size * t.grad_accum for name, t in batches.items()}
    assert effective == {
        "vae_a": 100,
        "vae_b": 120,
        "mapping_quality": 80,
        "mapping_scratch": 36,
        "mapping_hr": 36,
    }


def test_vae_component_must_belong_to_its_domain() -> None:
    config = load_config(VAETrainingConfig, TINY / "vae_a.yaml", ["component=vae_b_scratch"])
    with pytest.raises(ConfigError, match="vae_a"):
        build_vae_task(config, torch.device("cpu"))


# --- pieces of the loop --------------------------------------------------------------------------


def test_lr_factor_is_constant_then_linear_to_zero() -> None:
    assert [lr_factor(s, 10, 4) for s in (0, 5, 6, 7, 8, 9, 10)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_factor(3, 10, 0) == 1.0


def test_sharded_sampler_is_deterministic_disjoint_and_resumable() -> None:
    ranks = [ShardedSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    a, b = (list(s) for s in ranks)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    again = ShardedSampler(10, seed=3, rank=0, world_size=2)
    again.set_position(1, 2)
    assert list(again) == a[2:] and len(again) == 3
    again.set_epoch(2)
    assert list(again) != a


class ToyDataset(Dataset):
    """Fixed random regression pairs; ``set_epoch`` is recorded to check the loop calls it."""

    def __init__(self, n: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = torch.randn(n, 2, generator=generator)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


class ToyTask(TrainTask):
    """A linear regression: the loss is a plain per-sample mean, so accumulation must be exact."""

    ema_models = ("net",)

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.data = ToyDataset()
        self.models = {"net": nn.Linear(4, 2)}
        self.optimizers = {"net": torch.optim.SGD(self.models["net"].parameters(), lr=0.1)}

    def dataset(self) -> Dataset:
        return self.data

    def step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = ((ctx.models["net"](batch["x"]) - batch["y"]) ** 2).mean()
        ctx.backward(loss)
        return {"loss": loss}

    def final_weights(self, models):
        return {}


def _train_toy(tmp_path: Path, **train: object) -> Trainer:
    config = TrainConfig(
        total_steps=6,
        decay_steps=2,
        num_workers=0,
        log_every=1,
        sample_every=0,
        checkpoint_every=100,
        **train,
    )
    trainer = Trainer(ToyTask(), config, tmp_path, torch.device("cpu"), quiet=True)
    trainer.fit()
    return trainer


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path) -> None:
    big = _train_toy(tmp_path / "big", batch_size=4, grad_accum=1)
    small = _train_toy(tmp_path / "small", batch_size=2, grad_accum=2)
    for p, q in zip(big.task.models["net"].parameters(), small.task.models["net"].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert big.task.data.epochs == [0, 1, 2]  # 8 samples / batch 4 = 2 steps per epoch


def test_ema_averages_and_lr_decays(tmp_path: Path) -> None:
    trainer = _train_toy(tmp_path, batch_size=4, ema_decay=0.5)
    ema, net = trainer.ema["net"].model, trainer.task.models["net"]
    assert not torch.equal(ema.weight, net.weight)
    assert trainer.task.optimizers["net"].param_groups[0]["lr"] == 0.0
    lrs = [row["lr/net"] for row in read_scalars(tmp_path)]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.0])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train(tmp_path: Path, precision: str) -> None:
    trainer = _train_toy(tmp_path, batch_size=4, precision=precision)
    assert all(math.isfinite(row["loss"]) for row in read_scalars(tmp_path))
    assert (trainer.scaler is not None) == (precision == "fp16")
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


# --- losses and discriminators -------------------------------------------------------------------


def test_multiscale_discriminator_features_and_batch_split() -> None:
    torch.manual_seed(0)
    d = MultiScaleDiscriminator(3, base_channels=8, num_layers=3, num_scales=2)
    x = torch.randn(4, 3, 64, 64)
    out = d(x)
    assert len(out) == 2 and all(len(scale) == 3 + 2 for scale in out)
    assert out[0][-1].shape[1] == 1 and out[1][-1].shape[-1] < out[0][-1].shape[-1]
    first, second = split_batch(out, [1, 3])
    for whole, part in zip(d(x[:1]), first, strict=True):
        for f, g in zip(whole, part, strict=True):
            torch.testing.assert_close(f, g, rtol=1e-5, atol=1e-5)
    assert second[0][-1].shape[0] == 3
    sn = MultiScaleDiscriminator(6, base_channels=8, num_layers=2, num_scales=1, spectral_norm=True)
    assert any("parametrizations" in k for k in sn.state_dict())
    assert len(sn(torch.randn(1, 6, 32, 32))[0]) == 4


def test_gan_and_feature_matching_losses() -> None:
    zeros, ones = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert lsgan_loss(ones, True) == 0 and lsgan_loss(zeros, True) == 1
    assert lsgan_loss([[zeros], [zeros]], False) == 0 and lsgan_loss([[zeros], [zeros]], True) == 2
    fake = [[torch.ones(1, 2, 2, 2), zeros], [torch.ones(1, 2, 2, 2), zeros]]
    real = [[torch.zeros(1, 2, 2, 2), zeros], [torch.zeros(1, 2, 2, 2), zeros]]
    # two scales x one intermediate layer x L1 of 1 x 10 x 1/2 x 4/(3+1)
    assert feature_matching_loss(fake, real, 10.0, 3) == pytest.approx(10.0)


def test_scratch_detection_loss_terms() -> None:
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 3, :] = 1  # one thin scratch; the second crop has none
    right, wrong = (torch.where(mask > 0, 9.0, -9.0), torch.where(mask > 0, -9.0, 9.0))
    assert soft_dice_loss(right, mask) < 0.01 and soft_dice_loss(wrong, mask) > 0.99
    # Dice counts the false alarms of the defect-free crop too (pooled over the batch).
    alarms = right.clone()
    alarms[1, 0, :2] = 9.0
    assert soft_dice_loss(alarms, mask) > soft_dice_loss(right, mask) + 0.3
    logits = torch.randn(2, 1, 8, 8)
    plain = scratch_detection_loss(logits, mask, focal_gamma=2.0)
    with_dice = scratch_detection_loss(logits, mask, focal_gamma=2.0, dice_weight=0.5)
    assert torch.isclose(with_dice, plain + 0.5 * soft_dice_loss(logits, mask))
    # The focal factor only shrinks each pixel's loss, most where the prediction is already right.
    assert scratch_detection_loss(right, mask, focal_gamma=2.0) < 1e-6 < scratch_detection_loss(right, mask)
    assert scratch_detection_loss(logits, mask, focal_gamma=2.0) < scratch_detection_loss(logits, mask)


def test_latent_adversarial_labels_follow_the_paper() -> None:
    is_real = torch.tensor([True, False, True, True, False])
    real, synthetic = balanced_masks(is_real)
    assert real.tolist() == [1, 0, 1, 0, 0] and synthetic.tolist() == [0, 1, 0, 0, 1]
    # a verdict of 1 on synthetic and 0 on real latents is a perfect latent discriminator
    verdict = (~is_real).float().reshape(-1, 1, 1, 1).expand(5, 1, 3, 3)
    assert latent_discriminator_loss(verdict, is_real) == 0
    assert latent_generator_loss(verdict, is_real) == 1  # real-old latents judged fake: G is penalised
    none_real = torch.zeros(3, dtype=torch.bool)
    assert latent_discriminator_loss(torch.rand(3, 1, 2, 2), none_real) == 0


def test_vgg_loss_is_optional_and_loads_a_torchvision_state_dict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert build_vgg_loss(None, 10.0) is None
    assert "never downloads" in caplog.text
    with pytest.raises(FileNotFoundError):
        build_vgg_loss(str(tmp_path / "missing.pth"), 10.0)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in VGG19Features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # extra classifier keys are ignored
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    vgg = build_vgg_loss(str(path), 10.0)
    assert vgg is not None
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert vgg(x.detach(), x.detach()) == 0
    loss = vgg(x, torch.rand(1, 3, 32, 32))
    loss.backward()
    assert loss > 0 and x.grad is not None and not any(p.grad is not None for p in vgg.parameters())
    del state["features.28.weight"]
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"features\.28\.weight"):
        build_vgg_loss(str(path), 10.0)


# --- every stage trains --------------------------------------------------------------------------


def _assert_learns(rows: list[dict[str, float]], key: str, window: int = 10) -> tuple[float, float]:
    assert all(math.isfinite(v) for row in rows for v in row.values()), "a logged value is not finite"
    first = sum(r[key] for r in rows[:window]) / window
    last = sum(r[key] for r in rows[-window:]) / window
    assert last < first, f"{key} did not go down: first {first:.4f}, last {last:.4f}"
    return first, last


STAGES = {
    "vae_a": ("vae_a.yaml", VAETrainingConfig, build_vae_task, "metric/recon_l1", Component.VAE_A),
    "vae_b": ("vae_b.yaml", VAETrainingConfig, build_vae_task, "metric/recon_l1", Component.VAE_B_QUALITY),
    "mapping": (
        "mapping.yaml",
        MappingTrainingConfig,
        build_mapping_task,
        "metric/latent_l1",
        Component.MAPPING_QUALITY,
    ),
    "scratch": (
        "scratch.yaml",
        ScratchTrainingConfig,
        build_scratch_task,
        "loss/detection",
        Component.SCRATCH_DETECTOR,
    ),
}
"""Per stage: tiny config, config class, task builder, the loss that must go down, the component written."""


@needs_data
@pytest.mark.parametrize("stage", [*STAGES, "face"])
def test_stage_trains_and_writes_loadable_weights(
    stage: str, tmp_path: Path, tiny_vaes: tuple[Path, Path]
) -> None:
    if stage == "face":
        from face_enhance.training import FaceTrainingConfig, build_face_task

        spec = ("face.yaml", FaceTrainingConfig, build_face_task, "metric/image_l1", Component.FACE_256)
    else:
        spec = STAGES[stage]
    config_file, config_cls, build, key, component = spec
    overrides = data_overrides(clean=stage != "face", real=stage == "vae_a", faces=stage == "face")
    if stage == "mapping":
        overrides += [f"vae_a={tiny_vaes[0]}", f"vae_b={tiny_vaes[1]}"]
    run = tmp_path / "run"
    start = time.perf_counter()
    weights = launch(
        config_cls, build, config_path=str(TINY / config_file), overrides=overrides, out=str(run), quiet=True
    )
    elapsed = time.perf_counter() - start
    rows = read_scalars(run)
    config = load_config(config_cls, TINY / config_file, overrides)
    assert [r["step"] for r in rows] == list(range(1, config.train.total_steps + 1))
    first, last = _assert_learns(rows, key)
    logging.getLogger(__name__).info("%s: %s %.4f -> %.4f in %.1f s", stage, key, first, last, elapsed)

    assert (run / "checkpoints" / "last.pt").is_file()
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["train"]["total_steps"] == config.train.total_steps
    )
    assert load_config(config_cls, run / "config.yaml") == config  # the resolved config reproduces the run
    assert (run / "command.txt").is_file() and list((run / "samples").glob("*.png"))

    model = load_component(weights / component.value)
    size = 32
    with torch.no_grad():
        if stage.startswith("vae"):
            out = model(torch.zeros(1, 3, size, size))
        elif stage == "mapping":
            out = model(torch.zeros(1, 8, size // 4, size // 4), torch.zeros(1, 1, size, size))
        elif stage == "scratch":
            out = model(torch.zeros(1, 1, size, size))
        else:
            out = model(torch.zeros(1, 3, size, size))
    assert torch.isfinite(out).all()


@needs_data
@pytest.mark.parametrize(
    ("variant", "model", "component"),
    [
        ("nonlocal", {"nonlocal_res_blocks": 1}, Component.MAPPING_SCRATCH),
        (
            "patch_attention",
            {"patch_sizes": [4, 2], "pre_blocks": 1, "inter_blocks": 1, "post_blocks": 1},
            Component.MAPPING_HR,
        ),
    ],
)
def test_scratch_mapping_variants_train_with_masks(
    variant: str, model: dict, component: Component, tmp_path: Path, tiny_vaes: tuple[Path, Path]
) -> None:
    overrides = [
        *data_overrides(),
        f"vae_a={tiny_vaes[0]}",
        f"vae_b={tiny_vaes[1]}",
        f"variant={variant}",
        "loss.ttur=false",
        "discriminator.spectral_norm=true",
        "train.total_steps=4",
        "train.decay_steps=2",
        "train.sample_every=0",
        *(f"model.{k}={json.dumps(v)}" for k, v in model.items()),
    ]
    config = load_config(MappingTrainingConfig, TINY / "mapping.yaml", overrides)
    task = build_mapping_task(config, torch.device("cpu"))
    assert task.with_scratches
    batch = next(iter(torch.utils.data.DataLoader(task.dataset(), batch_size=8)))
    assert batch["mask"].sum() > 0  # the scratch variants see defect masks
    weights = launch(
        MappingTrainingConfig,
        build_mapping_task,
        config_path=str(TINY / "mapping.yaml"),
        overrides=overrides,
        out=str(tmp_path),
        quiet=True,
    )
    rows = read_scalars(tmp_path)
    assert len(rows) == 4 and all(math.isfinite(v) for r in rows for v in r.values())
    net = load_component(weights / component.value)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 4:10] = 1
    with torch.no_grad():
        assert torch.isfinite(net(torch.randn(1, 8, 8, 8), mask)).all()


def test_scratch_mapping_warm_started_from_the_quality_mapping(
    tmp_path: Path, tiny_vaes: tuple[Path, Path]
) -> None:
    """init_from copies every matching layer: without a hole the scratch mapping is the quality one."""
    torch.manual_seed(3)
    quality = MappingNetwork(
        MappingConfig(latent_channels=8, base_channels=8, max_channels=16, num_levels=1, num_blocks=2)
    )
    source = save_component(quality, tmp_path / "mapping_quality")
    model = {"num_levels": 1, "num_blocks": 2, "nonlocal_res_blocks": 1}
    overrides = [
        f"vae_a={tiny_vaes[0]}",
        f"vae_b={tiny_vaes[1]}",
        "variant=nonlocal",
        "loss.ttur=false",
        f"init_from={source}",
        *(f"model.{k}={v}" for k, v in model.items()),
    ]
    config = load_config(MappingTrainingConfig, TINY / "mapping.yaml", overrides)
    mapping = build_mapping_task(config, torch.device("cpu")).models["mapping"].eval()
    fresh = build_mapping(config.variant, config.model).state_dict()
    for name, value in mapping.state_dict().items():
        if name.startswith("nonlocal_block."):  # nothing to copy from: the block's own random start
            assert value.shape == fresh[name].shape
        else:
            assert value.equal(quality.state_dict()[name]), name
    latent = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        assert mapping(latent, torch.zeros(1, 1, 24, 28)).equal(quality(latent))
    with pytest.raises(ConfigError, match="init_from"):
        warm_start(mapping, ScratchDetector(ScratchDetectorConfig(base_channels=4, depth=2)))


def test_hr_mapping_built_on_the_quality_mapping_starts_as_it(
    tmp_path: Path, tiny_vaes: tuple[Path, Path]
) -> None:
    """init_renames reads the quality mapping's residual blocks as the patch-attention mapping's
    pre-attention blocks; with blending attention (closed gates) and no other blocks, the HR
    mapping starts with exactly the quality mapping's restoration, holes or not."""
    torch.manual_seed(4)
    quality = MappingNetwork(
        MappingConfig(latent_channels=8, base_channels=8, max_channels=16, num_levels=1, num_blocks=2)
    )
    source = save_component(quality, tmp_path / "mapping_quality")
    model = {
        "num_levels": 1,
        "pre_blocks": 2,
        "inter_blocks": 0,
        "post_blocks": 0,
        "patch_sizes": "[4, 2]",
        "hole_fusion": "blend",
    }
    overrides = [
        f"vae_a={tiny_vaes[0]}",
        f"vae_b={tiny_vaes[1]}",
        "variant=patch_attention",
        "loss.ttur=false",
        f"init_from={source}",
        "trained_parts=[attention]",
        *(f"model.{k}={v}" for k, v in model.items()),
    ]
    config = load_config(
        MappingTrainingConfig, TINY / "mapping.yaml", [*overrides, "init_renames={blocks: pre_blocks}"]
    )
    mapping = build_mapping_task(config, torch.device("cpu")).models["mapping"].eval()
    assert mapping.pre_blocks.state_dict().keys() == quality.blocks.state_dict().keys()
    for name, value in quality.blocks.state_dict().items():
        assert mapping.pre_blocks.state_dict()[name].equal(value)
    latent = torch.randn(1, 8, 8, 8)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 10:14, :] = 1
    with torch.no_grad():
        assert torch.allclose(mapping(latent, mask), quality(latent), atol=1e-6)
    trainable = {n for n, p in mapping.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("attention.") for n in trainable)
    unrenamed = build_mapping_task(
        load_config(MappingTrainingConfig, TINY / "mapping.yaml", overrides), torch.device("cpu")
    )
    assert not unrenamed.models["mapping"].pre_blocks[0].conv1.weight.equal(quality.blocks[0].conv1.weight)


def test_init_from_lays_later_sources_over_earlier_ones(tmp_path: Path, tiny_vaes: tuple[Path, Path]) -> None:
    """A list of init_from sources: each parameter comes from the last source that has it, so a
    quality mapping's trunk can carry a trained scratch mapping's non-local block."""
    torch.manual_seed(3)
    quality = MappingNetwork(MappingConfig(**SMALL_MAPPING, global_context=True))
    scratch = build_mapping(MappingVariant.NONLOCAL, {**SMALL_MAPPING, "nonlocal_res_blocks": 1})
    sources = [save_component(quality, tmp_path / "quality"), save_component(scratch, tmp_path / "scratch")]
    overrides = [
        f"vae_a={tiny_vaes[0]}",
        f"vae_b={tiny_vaes[1]}",
        "variant=nonlocal",
        "loss.ttur=false",
        f"init_from=[{sources[0]}, {sources[1]}]",
        "model.global_context=true",
        *(f"model.{k}={v}" for k, v in {**SMALL_MAPPING, "nonlocal_res_blocks": 1}.items()),
    ]
    config = load_config(MappingTrainingConfig, TINY / "mapping.yaml", overrides)
    mapping = build_mapping_task(config, torch.device("cpu")).models["mapping"]
    for name, value in mapping.state_dict().items():
        source = quality if name.startswith("context.") else scratch  # both have the rest: the last wins
        assert value.equal(source.state_dict()[name]), name
    assert not quality.state_dict()["out.weight"].equal(scratch.state_dict()["out.weight"])


@needs_data
def test_trained_parts_leave_the_rest_as_init_from_left_it(
    tmp_path: Path, tiny_vaes: tuple[Path, Path]
) -> None:
    """trained_parts=[nonlocal_block]: training moves the block and nothing else of the mapping."""
    torch.manual_seed(4)
    quality = MappingNetwork(MappingConfig(**SMALL_MAPPING))
    source = save_component(quality, tmp_path / "mapping_quality")
    overrides = [
        *data_overrides(),
        f"vae_a={tiny_vaes[0]}",
        f"vae_b={tiny_vaes[1]}",
        "variant=nonlocal",
        "loss.ttur=false",
        "loss.gan_weight=0",
        "loss.feat_weight=0",
        f"init_from={source}",
        "trained_parts=[nonlocal_block]",
        "train.total_steps=3",
        "train.decay_steps=0",
        "train.sample_every=0",
        *(f"model.{k}={v}" for k, v in {**SMALL_MAPPING, "nonlocal_res_blocks": 1}.items()),
    ]
    config = load_config(MappingTrainingConfig, TINY / "mapping.yaml", overrides)
    start = build_mapping_task(config, torch.device("cpu")).models["mapping"].state_dict()
    weights = launch(
        MappingTrainingConfig,
        build_mapping_task,
        config_path=str(TINY / "mapping.yaml"),
        overrides=overrides,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    trained = load_component(weights / Component.MAPPING_SCRATCH.value).state_dict()
    moved = {name for name, value in trained.items() if not value.equal(start[name])}
    assert moved and all(name.startswith("nonlocal_block.") for name in moved)
    assert all(trained[name].equal(value) for name, value in quality.state_dict().items())
    with pytest.raises(ConfigError, match="nonlocal_blok"):
        build_mapping_task(
            load_config(
                MappingTrainingConfig, TINY / "mapping.yaml", [*overrides, "trained_parts=[nonlocal_blok]"]
            ),
            torch.device("cpu"),
        )


def test_scratch_detector_warm_started_from_a_trained_one(tmp_path: Path) -> None:
    """init_from continues a trained detector: every tensor starts from it."""
    torch.manual_seed(5)
    trained = ScratchDetector(ScratchDetectorConfig(base_channels=4, depth=2))
    source = save_component(trained, tmp_path / "scratch_detector")
    config = load_config(ScratchTrainingConfig, TINY / "scratch.yaml", [f"init_from={source}"])
    detector = build_scratch_task(config, torch.device("cpu")).models["detector"]
    for name, value in detector.state_dict().items():
        assert value.equal(trained.state_dict()[name]), name
    fresh = build_scratch_task(load_config(ScratchTrainingConfig, TINY / "scratch.yaml"), torch.device("cpu"))
    assert not all(v.equal(trained.state_dict()[k]) for k, v in fresh.models["detector"].state_dict().items())


def test_grayscale_detector_continued_as_an_rgb_one(tmp_path: Path) -> None:
    """model.in_channels 3 with a gray init_from starts from the same predictions on RGB input."""
    torch.manual_seed(6)
    trained = ScratchDetector(ScratchDetectorConfig(base_channels=4, depth=2)).eval()
    source = save_component(trained, tmp_path / "scratch_detector")
    overrides = [f"init_from={source}", "model.in_channels=3"]
    config = load_config(ScratchTrainingConfig, TINY / "scratch.yaml", overrides)
    detector = build_scratch_task(config, torch.device("cpu")).models["detector"].eval()
    rgb = torch.rand(2, 3, 16, 16) * 2 - 1
    luma = (rgb * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(detector(rgb), trained(luma), atol=1e-5, rtol=1e-4)
    assert detector.stem.weight.shape[1] == 3
    with pytest.raises(ValueError, match="grayscale"):
        rgb_detector_from_gray(detector, LUMA)
    with pytest.raises(ValueError, match="sum"):
        rgb_detector_from_gray(trained, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("ttur", [False, True])
def test_global_context_branch_learns_at_its_own_rate(tiny_vaes: tuple[Path, Path], ttur: bool) -> None:
    """context_lr_scale puts the branch's parameters, and only those, in a group of their own rate."""
    overrides = [
        f"vae_a={tiny_vaes[0]}",
        f"vae_b={tiny_vaes[1]}",
        f"loss.ttur={str(ttur).lower()}",
        "model.num_levels=1",
        "model.global_context=true",
        "context_lr_scale=10",
    ]
    config = load_config(MappingTrainingConfig, TINY / "mapping.yaml", overrides)
    task = build_mapping_task(config, torch.device("cpu"))
    mapping = task.models["mapping"]
    groups = task.optimizers["mapping"].param_groups
    base = config.optim.lr * (0.5 if ttur else 1.0)  # TTUR halves the generator's rate
    assert [g["lr"] for g in groups] == pytest.approx([base, 10 * base])
    context = {id(p) for p in mapping.context.parameters()}
    assert {id(p) for p in groups[1]["params"]} == context
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(mapping.parameters()))
    without_branch = [o for o in overrides if o != "model.global_context=true"]
    with pytest.raises(ConfigError, match="context_lr_scale"):
        build_mapping_task(
            load_config(MappingTrainingConfig, TINY / "mapping.yaml", without_branch), torch.device("cpu")
        )


@pytest.mark.parametrize(
    ("variant", "extra", "dilation"),
    [
        ("nonlocal", [], 0),
        ("patch_attention", ["model.patch_sizes=[4, 2]"], 3),  # the released HR mode's 7x7 widening
        ("nonlocal", ["model.hole_dilation=1"], 1),
        ("patch_attention", ["model.patch_sizes=[4, 2]", "model.hole_dilation=0"], 0),
        ("nonlocal", ["model.hole_fill=inpaint"], 0),
        ("patch_attention", ["model.patch_sizes=[4, 2]", "model.hole_fill=inpaint"], 3),
    ],
)
def test_scratch_mappings_encode_the_holes_as_the_pipeline_paints_them(
    tiny_vaes: tuple[Path, Path], variant: str, extra: list[str], dilation: int
) -> None:
    """Training must show VAE A the holes as the pipeline will: filled as the mapping's config says
    (white, whatever the defect, or inpainted from the surroundings), and in HR mode as widened
    by the released dilation, or the HR mapping never learns to fill the wider holes it is shown."""
    overrides = [f"vae_a={tiny_vaes[0]}", f"vae_b={tiny_vaes[1]}", f"variant={variant}", "loss.ttur=false"]
    task = build_mapping_task(
        load_config(MappingTrainingConfig, TINY / "mapping.yaml", overrides + extra), torch.device("cpu")
    )
    degraded = torch.full((2, 3, 32, 32), -0.5)
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:9, 10:12] = 1
    mask[0, :, 30:, 0] = 1  # at the border
    seen: list[torch.Tensor] = []
    encode = task.vae_a.encode
    task.vae_a.encode = lambda x: seen.append(x.clone()) or encode(x)  # type: ignore[method-assign]
    batch = {"degraded": degraded, "clean": torch.zeros_like(degraded), "mask": mask}
    task.samples(batch, None)  # type: ignore[arg-type]
    (encoded,) = seen
    side = 2 * dilation + 1
    kernel = np.ones((side, side), np.uint8)
    painted = np.stack([cv2.dilate(m, kernel) for m in mask[:, 0].numpy().astype(np.uint8)])
    holes = torch.from_numpy(painted > 0)[:, None].expand_as(degraded)
    if "model.hole_fill=inpaint" in extra:  # the flat surroundings, to 8 bits
        assert torch.allclose(encoded[holes], torch.tensor(-0.5), atol=1 / 127.5)
    else:
        assert encoded[holes].eq(1).all()
    assert encoded[~holes].eq(-0.5).all()
    assert degraded.eq(-0.5).all() and mask.sum() == 12  # the batch itself is left as it was


@needs_data
def test_perceptual_loss_joins_training_when_weights_are_given(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "vgg19.pth"
    torch.save(VGG19Features().state_dict(), path)
    overrides = [
        *data_overrides(),
        f"loss.vgg_weights={path}",
        "train.total_steps=2",
        "train.decay_steps=1",
        "train.sample_every=0",
    ]
    launch(
        VAETrainingConfig,
        build_vae_task,
        config_path=str(TINY / "vae_b.yaml"),
        overrides=overrides,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    rows = read_scalars(tmp_path / "run")
    assert all(r["g/vgg"] > 0 for r in rows)


# --- resume after SIGKILL ------------------------------------------------------------------------


def _train_command(run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "scripts" / "train_vae.py"),
        "--config",
        str(TINY / "vae_a.yaml"),
        "--out",
        str(run),
        "--quiet",
        "--set",
        "train.total_steps=60",
        "--set",
        "train.checkpoint_every=10",
        *(arg for o in data_overrides(real=True) for arg in ("--set", o)),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


@needs_data
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_command(straight), env=_env(), check=True, cwd=REPO, capture_output=True)

    proc = subprocess.Popen(
        _train_command(killed), env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = _checkpoint_step(checkpoint)
    assert 10 <= step < 60, f"the run was not interrupted mid-way (checkpoint at step {step})"
    assert not (killed / "weights").exists()

    subprocess.run(
        _train_command(killed, "--resume", "auto"), env=_env(), check=True, cwd=REPO, capture_output=True
    )
    a = load_file(straight / "weights" / "vae_a" / "model.safetensors")
    b = load_file(killed / "weights" / "vae_a" / "model.safetensors")
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-6, f"resumed weights differ by {diff}"
    # discriminators, optimiser state and every logged loss match too
    sa = torch.load(straight / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    sb = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for name in sa["models"]:
        for key, value in sa["models"][name].items():
            torch.testing.assert_close(sb["models"][name][key], value, rtol=0, atol=1e-6)
    rows_a, rows_b = read_scalars(straight), read_scalars(killed)
    assert [r["step"] for r in rows_b] == list(range(1, 61))
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["g/total"] == pytest.approx(rb["g/total"], rel=1e-6, abs=1e-7)


# --- DDP -----------------------------------------------------------------------------------------


@needs_data
@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """torchrun x 2 with batch 2 ends where one process with batch 4 ends (VAE A: both
    discriminators, the latent adversarial balancing across the batch, real and synthetic data).

    Float64, because in float32 Adam's first steps (about ``lr * sign(grad)`` per weight) turn the
    rounding differences of the two summation orders into differences of ``lr`` wherever a true
    gradient is zero, such as the bias of a convolution in front of an instance norm. The latent
    noise is off: each rank draws its own.
    """
    settings = [
        "train.total_steps=4",
        "train.decay_steps=2",
        "train.checkpoint_every=2",
        "train.precision=fp64",
        "loss.latent_noise_std=0",
        *data_overrides(real=True),
    ]

    def command(run: Path, batch_size: int, launcher: list[str]) -> list[str]:
        sets = [*settings, f"train.batch_size={batch_size}"]
        return [
            *launcher,
            str(REPO / "scripts" / "train_vae.py"),
            "--config",
            str(TINY / "vae_a.yaml"),
            "--out",
            str(run),
            "--quiet",
            *(arg for o in sets for arg in ("--set", o)),
        ]

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for run, batch_size, launcher in ((single, 4, [sys.executable]), (ddp, 2, torchrun)):
        result = subprocess.run(
            command(run, batch_size, launcher),
            env=_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    state = torch.load(ddp / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    assert "DDP replicas in sync across 2 ranks" in (ddp / "train.log").read_text()
    reference = torch.load(single / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    for name, weights in reference["models"].items():  # generator and both discriminators
        for key, value in weights.items():
            torch.testing.assert_close(state["models"][name][key], value, rtol=0, atol=1e-5)
    a = load_file(single / "weights" / "vae_a" / "model.safetensors")
    b = load_file(ddp / "weights" / "vae_a" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in b.values())  # the component format, after float64 training
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    # The logged losses (averaged over the ranks) are those of the single process, latent terms included.
    rows_single, rows_ddp = read_scalars(single), read_scalars(ddp)
    assert [r["step"] for r in rows_ddp] == [1, 2, 3, 4]
    for ra, rb in zip(rows_single, rows_ddp, strict=True):
        for key in ("d/image", "d/latent", "g/latent_gan", "g/total"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6), key
    vae = load_component(ddp / "weights" / "vae_a")
    assert torch.isfinite(vae(torch.zeros(1, 3, 32, 32))).all()


def test_config_dataclasses_round_trip_through_yaml(tmp_path: Path) -> None:
    from latent_restore.core.config import dump_config_yaml

    config = load_config(MappingTrainingConfig, TINY / "mapping.yaml", ["model.num_blocks=2"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config_yaml(config))
    again = load_config(MappingTrainingConfig, path)
    assert again == config and dataclasses.asdict(again)["model"]["num_blocks"] == 2
