"""The pix2pix restoration baseline: U-Net and PatchGAN structure, tiny training, pipeline, CLI and eval."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CLEAN_DIRS, REPO, needs_data, run_script
from PIL import Image
from torch import nn

from latent_restore.cli import main
from latent_restore.core.checkpoint import load_component, save_component
from latent_restore.core.discriminators import PatchDiscriminator
from latent_restore.core.losses import GanMode, gan_loss
from latent_restore.core.unet import UNetConfig
from latent_restore.pipeline import (
    ComponentStore,
    RestorationModel,
    RestorationOptions,
    RestorationPipeline,
    WeightsNotFoundError,
)
from latent_restore.pix2pix import Pix2PixGenerator, translate
from latent_restore.pix2pix.training import Pix2PixTrainingConfig, build_pix2pix_task
from latent_restore.weights import Component

TINY = UNetConfig(base_channels=4, max_channels=16, depth=3)


pytestmark = pytest.mark.usefixtures("restore_torch_state")


@pytest.fixture(scope="module")
def pix2pix_weights(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny weights directory plus a tiny random ``pix2pix`` component."""
    weights = tmp_path_factory.mktemp("pix2pix") / "weights"
    shutil.copytree(tiny_weights, weights)
    torch.manual_seed(0)
    save_component(Pix2PixGenerator(TINY), weights / Component.PIX2PIX.value)
    return weights


# --- networks ------------------------------------------------------------------------------------


def test_tiny_generator_shape_gradients_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Pix2PixGenerator(TINY)
    x = torch.randn(2, 3, 16, 24)
    out = net(x)
    assert out.shape == (2, 3, 16, 24) and out.abs().max() <= 1
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 3, 12, 16))
    net.eval()
    save_component(net, tmp_path / "pix2pix")
    loaded = load_component(tmp_path / "pix2pix", expected=Pix2PixGenerator)
    assert loaded.config == TINY
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def test_full_size_generator_is_the_papers_unet_256() -> None:
    """Encoder C64-C128-C256-C512x5, BatchNorm except the first layer, LeakyReLU 0.2; decoder mirrored
    with skips (inputs doubled), dropout 0.5 in the first three decoder blocks, tanh output."""
    net = Pix2PixGenerator(UNetConfig())
    assert [b.conv.out_channels for b in net.down] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert [b.conv.in_channels for b in net.down] == [3, 64, 128, 256, 512, 512, 512, 512]
    for block in [*net.down, *net.up, net.head]:
        conv = block if isinstance(block, nn.ConvTranspose2d) else block.conv
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
    assert net.down[0].norm is None
    assert all(isinstance(b.norm, nn.BatchNorm2d) for b in net.down[1:])
    assert [b.conv.in_channels for b in net.up] == [512, 1024, 1024, 1024, 1024, 512, 256]
    assert [b.conv.out_channels for b in net.up] == [512, 512, 512, 512, 256, 128, 64]
    assert all(isinstance(b.norm, nn.BatchNorm2d) for b in net.up)
    assert [b.dropout.p if b.dropout is not None else 0.0 for b in net.up] == [0.5] * 3 + [0.0] * 4
    assert (net.head.in_channels, net.head.out_channels) == (128, 3)
    assert net.config.multiple == 256
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(54.4e6, rel=0.01)  # pix2pix unet_256


def test_patchgan_has_a_70x70_receptive_field() -> None:
    disc = PatchDiscriminator(6, 64, num_layers=3)
    field = 1
    for conv in reversed(disc.convs):
        field = (field - 1) * conv.stride[0] + conv.kernel_size[0]
    assert field == 70
    logits = torch.tensor([[2.0, -1.0]])
    assert gan_loss(logits, True, GanMode.VANILLA) == pytest.approx(
        float(-torch.log(torch.sigmoid(logits)).mean()), rel=1e-5
    )


@pytest.mark.parametrize("size", [(37, 45), (5, 3), (64, 16)])
def test_translate_pads_and_crops_back(size: tuple[int, int]) -> None:
    net = Pix2PixGenerator(TINY).eval()
    x = torch.rand(1, 3, *size) * 2 - 1
    out = translate(net, x)
    assert out.shape == (1, 3, *size) and torch.isfinite(out).all()
    x8 = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(translate(net, x8), net(x8))  # no padding when the size fits


# --- training ------------------------------------------------------------------------------------


@needs_data
def test_training_script_runs_and_writes_loadable_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [
        "--config",
        str(REPO / "scripts" / "configs" / "tiny" / "pix2pix.yaml"),
        "--set",
        f"data.clean_dirs={json.dumps(CLEAN_DIRS)}",
        "--out",
        str(run),
        "--quiet",
    ]
    assert run_script("train_pix2pix", argv) == 0
    rows = [json.loads(line) for line in (run / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert {"g/l1", "g/gan", "d/gan"} <= set(rows[0])
    net = load_component(run / "weights" / Component.PIX2PIX.value, expected=Pix2PixGenerator)
    assert torch.isfinite(translate(net, torch.zeros(1, 3, 20, 28))).all()


def test_task_rejects_crops_the_unet_cannot_take() -> None:
    from latent_restore.core.config import ConfigError, load_config

    config = load_config(Pix2PixTrainingConfig, REPO / "scripts" / "configs" / "tiny" / "pix2pix.yaml")
    config.data.crop_size = 36
    with pytest.raises(ConfigError, match="multiple of"):
        build_pix2pix_task(config, torch.device("cpu"))


# --- pipeline, CLI, eval -------------------------------------------------------------------------


def test_pipeline_uses_pix2pix_instead_of_the_vaes(pix2pix_weights: Path) -> None:
    store = ComponentStore(pix2pix_weights, torch.device("cpu"), torch.float32)
    pipeline = RestorationPipeline(store)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (29, 43, 3), dtype=np.uint8)
    options = RestorationOptions(faces=False, model=RestorationModel.PIX2PIX)
    assert pipeline.required_components(options) == [Component.PIX2PIX]
    result = pipeline(photo, options)
    assert result.image.shape == (29, 43, 3) and result.path == "pix2pix"
    two_vae = pipeline(photo, RestorationOptions(faces=False))
    assert not np.allclose(two_vae.image, result.image)
    with pytest.raises(ValueError, match="two-VAE"):
        pipeline.check_ready(RestorationOptions(model="pix2pix", with_scratch=True))


def test_cli_run_with_pix2pix(tmp_path: Path, pix2pix_weights: Path, tiny_weights: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(inputs / "a.png")
    out = tmp_path / "out"
    common = ["run", "--quiet", "--input", str(inputs), "--no-faces", "--device", "cpu"]
    assert main([*common, "--output", str(out), "--weights", str(pix2pix_weights), "--model", "pix2pix"]) == 0
    with Image.open(out / "a.png") as image:
        assert image.size == (50, 37) and image.mode == "RGB"
    # The default stays the two-VAE model; a directory without pix2pix cannot run it.
    assert main([*common, "--output", str(tmp_path / "o2"), "--weights", str(tiny_weights)]) == 0
    missing = main(
        [*common, "--output", str(tmp_path / "o3"), "--weights", str(tiny_weights), "--model", "pix2pix"]
    )
    assert missing == 2
    with pytest.raises(WeightsNotFoundError, match="pix2pix"):
        RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False).check_ready(
            RestorationOptions(model=RestorationModel.PIX2PIX)
        )
    pix2pix = ["--weights", str(pix2pix_weights), "--model", "pix2pix"]
    assert main([*common, "--output", str(tmp_path / "o4"), *pix2pix, "--with-scratch"]) == 2


def test_eval_reports_pix2pix_beside_the_two_vae_method(tmp_path: Path, pix2pix_weights: Path) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(clean / f"p{i}.png")
    out = tmp_path / "eval"
    args = ["eval", "--quiet", "--clean", str(clean), "--all", "--size", "32", "--device", "cpu"]
    assert main([*args, "--weights", str(pix2pix_weights), "--out", str(out)]) == 0
    methods = json.loads((out / "results.json").read_text())["methods"]
    assert set(methods) == {"input", "latent-restore", "nlmeans", "nlmeans+levels", "pix2pix"}
    assert len(methods["pix2pix"]["per_image"]) == 2 and math.isfinite(methods["pix2pix"]["psnr"])
    assert "| pix2pix |" in (out / "results.md").read_text()
