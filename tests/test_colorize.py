"""The colorization stage: Lab maths, the L -> ab U-Net, both training phases, pipeline and CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CLEAN_DIRS, DATA, REPO, needs_data, needs_shared, run_script
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

from latent_restore.cli import main
from latent_restore.colorize import Colorizer, ColorizerConfig, colorize
from latent_restore.colorize.calibration import calibrate, with_chroma_scale
from latent_restore.colorize.lab import fit_chroma_to_gamut, lab_to_linear_rgb, lab_to_rgb, rgb_to_lab
from latent_restore.colorize.training import ColorizeTrainingConfig, build_colorize_task
from latent_restore.core.checkpoint import load_component, save_component
from latent_restore.core.config import load_config
from latent_restore.core.data import center_square_resize, list_images, load_rgb, to_grayscale
from latent_restore.core.splits import split
from latent_restore.pipeline import ComponentStore, RestorationOptions, RestorationPipeline
from latent_restore.weights import Component, default_weights_dir

TINY = ColorizerConfig(base_channels=4, max_channels=16, depth=3)
L_ROUNDING = 1.0
"""Allowed change of CIE L from 8-bit rounding of a colour (each channel off by <= 0.5 levels)."""


pytestmark = pytest.mark.usefixtures("restore_torch_state")


def vivid_colorizer(seed: int = 0) -> Colorizer:
    """A tiny random colorizer whose output bias pushes every pixel towards a clear colour."""
    torch.manual_seed(seed)
    net = Colorizer(TINY)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.35, -0.3]))
    return net.eval()


@pytest.fixture(scope="module")
def colorize_weights(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny weights directory plus a tiny random ``colorize`` component."""
    weights = tmp_path_factory.mktemp("colorize") / "weights"
    shutil.copytree(tiny_weights, weights)
    save_component(vivid_colorizer(), weights / Component.COLORIZE.value)
    return weights


def lightness(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    return rgb2lab(rgb)[..., 0]


def gray_photo(height: int = 40, width: int = 52) -> np.ndarray:
    """A smooth gray gradient with a darker disc: ``H x W`` uint8."""
    y, x = np.mgrid[:height, :width]
    gray = 40 + 160 * x / (width - 1) + 30 * np.sin(y / 5)
    gray[(y - height / 2) ** 2 + (x - width / 3) ** 2 < (height / 4) ** 2] -= 30
    return np.clip(gray, 0, 255).astype(np.uint8)


# --- Lab -----------------------------------------------------------------------------------------


def test_lab_conversion_matches_skimage_and_inverts() -> None:
    rgb = np.random.default_rng(0).random((17, 23, 3))
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, rgb2lab(rgb), atol=1e-6)
    back = lab_to_rgb(torch.from_numpy(ours).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, rgb, atol=1e-9)


def test_gamut_fit_keeps_lightness_and_hue() -> None:
    lab_l = torch.linspace(1, 99, 50, dtype=torch.float64).view(1, 1, 5, 10)
    ab = torch.stack([torch.full((5, 10), 100.0), torch.full((5, 10), -80.0)]).to(torch.float64)[None]
    fitted = fit_chroma_to_gamut(lab_l, ab)
    linear = lab_to_linear_rgb(torch.cat([lab_l, fitted], 1))
    assert linear.min() >= -1e-6 and linear.max() <= 1 + 1e-6
    ratio = fitted / ab
    assert torch.allclose(ratio[:, 0], ratio[:, 1]) and ratio.max() <= 1 and ratio.min() >= 0
    assert ratio.max() > 0.3  # chroma is reduced, not dropped
    in_gamut = torch.tensor([[[[20.0]], [[-10.0]]]], dtype=torch.float64)
    assert torch.equal(
        fit_chroma_to_gamut(torch.full((1, 1, 1, 1), 60.0, dtype=torch.float64), in_gamut), in_gamut
    )


# --- network -------------------------------------------------------------------------------------


def test_tiny_colorizer_shape_gradients_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Colorizer(TINY)
    x = torch.rand(2, 1, 16, 8) * 2 - 1
    out = net(x)
    assert out.shape == (2, 2, 16, 8) and out.abs().max() <= 1
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    net.eval()
    save_component(net, tmp_path / "colorize")
    loaded = load_component(tmp_path / "colorize", expected=Colorizer)
    assert loaded.config == TINY
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    with pytest.raises(ValueError, match="L"):
        ColorizerConfig(in_channels=3)


def test_colorize_keeps_lightness_and_adds_colour() -> None:
    net = vivid_colorizer()
    gray = gray_photo()
    out = colorize(net, gray)
    assert out.dtype == np.uint8 and out.shape == (*gray.shape, 3)
    assert np.abs(out[..., 0].astype(int) - out[..., 2].astype(int)).mean() > 10  # no longer gray
    assert np.abs(lightness(out) - lightness(gray[..., None].repeat(3, 2))).max() <= L_ROUNDING
    # Float in, float out: the lightness is kept to float precision (no 8-bit rounding).
    colour = np.random.default_rng(3).random((21, 13, 3)).astype(np.float32)
    out_f = colorize(net, colour)
    assert out_f.dtype == np.float32 and out_f.shape == colour.shape
    np.testing.assert_allclose(lightness(out_f), lightness(colour), atol=1e-3)
    with pytest.raises(ValueError, match="H x W"):
        colorize(net, np.zeros((4, 4, 2), dtype=np.uint8))


# --- training ------------------------------------------------------------------------------------


@needs_data
def test_pretrain_then_gan_phase_train_and_write_loadable_weights(tmp_path: Path) -> None:
    base = [
        "--config",
        str(REPO / "scripts" / "configs" / "tiny" / "colorize.yaml"),
        "--set",
        f"data.clean_dirs={json.dumps(CLEAN_DIRS)}",
        "--quiet",
    ]
    pre, gan = tmp_path / "pre", tmp_path / "gan"
    assert run_script("train_colorize", [*base, "--out", str(pre)]) == 0
    weights = pre / "weights" / Component.COLORIZE.value
    assert (
        run_script("train_colorize", [*base, "--phase", "gan", "--init", str(weights), "--out", str(gan)])
        == 0
    )
    for run, adversarial in ((pre, False), (gan, True)):
        rows = [json.loads(line) for line in (run / "logs" / "scalars.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 7))
        assert all(math.isfinite(v) for r in rows for v in r.values())
        assert ("d/gan" in rows[0]) == adversarial and ("g/gan" in rows[0]) == adversarial
        net = load_component(run / "weights" / Component.COLORIZE.value, expected=Colorizer)
        assert colorize(net, gray_photo(20, 28)).shape == (20, 28, 3)
    # --export-weights turns the last checkpoint into the same components the run ended with.
    exported = tmp_path / "exported"
    assert run_script("train_colorize", ["--out", str(gan), "--export-weights", str(exported)]) == 0
    final = load_component(gan / "weights" / Component.COLORIZE.value).state_dict()
    again = load_component(exported / Component.COLORIZE.value).state_dict()
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    with pytest.raises(SystemExit) as refused:
        run_script("train_colorize", ["--out", str(tmp_path / "none"), "--export-weights", str(exported)])
    assert refused.value.code == 2
    # --set reaches what only inference reads; an override that changes a shape is refused.
    scaled = tmp_path / "scaled"
    args = ["--out", str(pre), "--set", "model.chroma_scale=0.5", "--export-weights", str(scaled)]
    assert run_script("train_colorize", args) == 0
    net = load_component(scaled / Component.COLORIZE.value)
    assert net.config.chroma_scale == 0.5
    pretrained = load_component(weights).state_dict()
    assert all(torch.equal(pretrained[k], v) for k, v in net.state_dict().items())
    with pytest.raises(SystemExit) as refused:
        args = ["--out", str(pre), "--set", "model.base_channels=3", "--export-weights", str(tmp_path / "x")]
        run_script("train_colorize", args)
    assert refused.value.code == 2 and not (tmp_path / "x").exists()
    # The gan phase starts from the pre-trained weights, not from a fresh network.
    config = load_config(
        ColorizeTrainingConfig, REPO / "scripts" / "configs" / "tiny" / "colorize.yaml", ["phase=gan"]
    )
    config.init_from = str(weights)
    task = build_colorize_task(config, torch.device("cpu"))
    pretrained = load_component(weights).state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in task.models["generator"].state_dict().items())
    assert set(task.models) == {"generator", "discriminator"}


# --- pipeline and CLI ----------------------------------------------------------------------------


def test_pipeline_colorizes_last_and_keeps_lightness(colorize_weights: Path) -> None:
    pipeline = RestorationPipeline(ComponentStore(colorize_weights, torch.device("cpu"), torch.float32))
    gray = gray_photo()[..., None].repeat(3, 2)
    options = RestorationOptions(faces=False, colorize=True, return_stages=True)
    assert Component.COLORIZE in pipeline.required_components(options)
    result = pipeline(gray, options)
    restored = result.stages["global"]  # gray: the monochrome tone was applied before colorization
    assert np.array_equal(restored[..., 0], restored[..., 1])
    out = (result.image * 255).round().astype(np.uint8)
    assert np.abs(out[..., 0].astype(int) - out[..., 2].astype(int)).mean() > 10
    assert np.abs(lightness(result.image) - lightness(restored)).max() <= L_ROUNDING
    plain = pipeline(gray, RestorationOptions(faces=False))
    assert np.array_equal(plain.image[..., 0], plain.image[..., 2])  # off by default: gray stays gray


def test_cli_colorize_turns_a_gray_file_into_colour(tmp_path: Path, colorize_weights: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(gray_photo(), mode="L").save(inputs / "gray.png")
    common = ["run", "--quiet", "--input", str(inputs), "--no-faces", "--device", "cpu", "--weights"]
    assert main([*common, str(colorize_weights), "--output", str(tmp_path / "plain")]) == 0
    assert main([*common, str(colorize_weights), "--output", str(tmp_path / "colour"), "--colorize"]) == 0
    with Image.open(tmp_path / "plain" / "gray.png") as image:
        assert image.mode == "L"
        plain = np.asarray(image.convert("RGB"))
    with Image.open(tmp_path / "colour" / "gray.png") as image:
        assert image.mode == "RGB" and image.size == (52, 40)
        colour = np.asarray(image)
    assert not np.array_equal(colour[..., 0], colour[..., 1])
    assert np.abs(lightness(colour) - lightness(plain)).max() <= L_ROUNDING


def test_cli_colorize_without_the_component_fails_early(tmp_path: Path, tiny_weights: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(gray_photo(), mode="L").save(inputs / "gray.png")
    args = ["run", "--quiet", "--input", str(inputs), "--output", str(tmp_path / "out"), "--no-faces"]
    assert main([*args, "--weights", str(tiny_weights), "--colorize"]) == 2
    assert not (tmp_path / "out" / "gray.png").exists()


# --- quality of trained weights ------------------------------------------------------------------


def trained_colorizer() -> Path | None:
    weights = default_weights_dir()
    if weights is None:
        return None
    component = weights / Component.COLORIZE.value
    return component if (component / "config.json").is_file() else None


@needs_shared("data/clean")
@pytest.mark.skipif(
    trained_colorizer() is None,
    reason="no trained colorize component in the built-in weights (train one: scripts/train_colorize.py)",
)
def test_trained_colorizer_beats_gray_in_ciede2000() -> None:
    """Colour error (CIEDE2000 to the original) of colorized held-out photos is below the gray photos'."""
    component = trained_colorizer()
    net = load_component(component, expected=Colorizer)
    root = DATA / "clean"
    held_out = split(list_images(root), root)[1][:8]
    assert held_out, "no held-out photos under the shared data"
    gray_errors, colour_errors = [], []
    for path in held_out:
        clean = center_square_resize(load_rgb(path), 256)
        gray = to_grayscale(clean)
        reference = rgb2lab(clean)
        gray_errors.append(deltaE_ciede2000(reference, rgb2lab(gray)).mean())
        colour_errors.append(deltaE_ciede2000(reference, rgb2lab(colorize(net, gray))).mean())
    assert np.mean(colour_errors) < np.mean(gray_errors)


def test_chroma_scale_scales_the_prediction_and_zero_gives_the_gray_photo() -> None:
    net = vivid_colorizer().eval()
    gray = np.repeat(np.linspace(30, 220, 32 * 32).reshape(32, 32, 1).astype(np.uint8), 3, axis=2)
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    half = with_chroma_scale(net, 0.5)
    torch.testing.assert_close(half(x), 0.5 * net(x))
    assert net.config.chroma_scale == 1.0, "the original keeps its scale"
    neutral = colorize(with_chroma_scale(net, 0.0), gray).astype(int)
    assert np.abs(neutral - gray).max() <= 1
    assert np.abs(colorize(net, gray).astype(int) - gray).max() > 20


def test_calibration_shrinks_a_wrong_colour_towards_gray() -> None:
    """A colorizer that paints everything one colour is worse than gray: calibration picks a small scale."""
    rng = np.random.default_rng(0)
    photos = [np.repeat(rng.integers(40, 220, (32, 32, 1), dtype=np.uint8), 3, axis=2) for _ in range(3)]
    result = calibrate(vivid_colorizer().eval(), photos, scales=(0.0, 0.5, 1.0))
    gray_error = np.mean([deltaE_ciede2000(rgb2lab(p), rgb2lab(to_grayscale(p))).mean() for p in photos])
    assert result.errors[0.0] == pytest.approx(gray_error, abs=1e-6)
    assert result.errors[0.0] < result.errors[0.5] < result.errors[1.0]
    assert result.best == 0.0
