"""Face stage: tiny generator, converter details, detection on real photos, round trip, robustness.

The photos come from ``../shared/data/faces`` (tests that need them skip when it is absent); the
numerical equivalence with the released code is in ``test_face_fixtures.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import OrderedDict
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DATA
from PIL import Image
from skimage.transform import SimilarityTransform, warp
from torch import nn

from face_enhance.alignment import estimate_alignment, template_points
from face_enhance.blending import coverage_mask, match_histograms, paste_box, warp_back
from face_enhance.convert import (
    OFFICIAL_FACE_INNER,
    OFFICIAL_FACE_MODULES,
    face_generator_from_official,
    fold_spectral_norm,
    is_official_face_generator,
)
from face_enhance.detection import (
    DetectedFace,
    DetectorConfig,
    FaceDetector,
    five_points,
    landmark_model_path,
)
from face_enhance.enhancer import FaceEnhancer, FaceEnhancerConfig
from face_enhance.generator import (
    FaceGenerator,
    FaceGeneratorConfig,
    apply_spectral_norm,
    remove_spectral_norm,
)
from latent_restore.convert import convert_official
from latent_restore.core.checkpoint import CheckpointError, load_component, rename_keys, save_component
from latent_restore.weights import Component

FACES = DATA / "faces"
ALIGNED_FOLDERS = (
    "gfpgan_cropped",
    "codeformer_cropped",
    "codeformer_gray",
    "diffbir_aligned",
    "kair_real_faces",
)
TINY = {"base_channels": 4, "spade_hidden_channels": 8}
ENHANCER_SIZE = 64
"""Crop side of the tiny generators in the enhancer tests: every step is size-agnostic, and tiny
convolutions at 256 are slow on a CPU."""


def _photo(relative: str, mode: str = "RGB") -> np.ndarray:
    path = FACES / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return np.asarray(Image.open(path).convert(mode))


def _photos(folder: str) -> list[Path]:
    paths = sorted(p for p in (FACES / folder).glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        pytest.skip(f"no photos in {FACES / folder}")
    return paths


def _tiny_generator(load_size: int = 64, seed: int = 0) -> FaceGenerator:
    """Random tiny generator with non-trivial batch-norm statistics (as a trained one has)."""
    torch.manual_seed(seed)
    model = FaceGenerator(FaceGeneratorConfig(load_size=load_size, **TINY))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def tiny_enhancer(detector: FaceDetector) -> FaceEnhancer:
    return FaceEnhancer(_tiny_generator(ENHANCER_SIZE), FaceEnhancerConfig(batch_size=3), detector=detector)


# --- generator -------------------------------------------------------------------------------


def test_generator_output_shape() -> None:
    model = _tiny_generator(64)
    assert model.config.latent_size == 2
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64) * 2 - 1)
        other = model(torch.rand(1, 3, 40, 24) * 2 - 1)
    assert out.shape == (2, 3, 64, 64)
    assert other.shape == (1, 3, 64, 64), "the output size is fixed by load_size"
    assert out.abs().max() <= 1.0


def test_generator_config_rejects_bad_load_size() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        FaceGeneratorConfig(load_size=100)


def test_every_parameter_receives_a_gradient() -> None:
    model = _tiny_generator(64)
    model(torch.rand(2, 3, 64, 64) * 2 - 1).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_training_with_spectral_norm_and_folding_back(tmp_path: Path) -> None:
    model = apply_spectral_norm(_tiny_generator(64)).train()
    normalised = list(model.spectral_norm_convs())
    assert len(normalised) == 2 * 7 + 4  # two convs per block, shortcut convs in the four narrowing blocks
    assert all(hasattr(conv, "parametrizations") for conv in normalised)
    model(torch.rand(2, 3, 64, 64) * 2 - 1).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name

    model.eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model(x)
    remove_spectral_norm(model)
    assert set(model.state_dict()) == set(_tiny_generator(64).state_dict())
    save_component(model, tmp_path / "face")
    loaded = load_component(tmp_path / "face", expected=FaceGenerator)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-6)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _tiny_generator(64)
    save_component(model, tmp_path / "face")
    loaded = load_component(tmp_path / "face", expected=FaceGenerator)
    assert loaded.config == model.config
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- converter -------------------------------------------------------------------------------


def _reverse(table: dict[str, str]) -> dict[str, str]:
    return {ours: official for official, ours in reversed(table.items())}


def _official_layout(
    model: FaceGenerator, seed: int = 1
) -> tuple[OrderedDict[str, torch.Tensor], FaceGenerator]:
    """``model`` saved the way the released files are: official key names, spectral-normalised convs.

    Each normalised conv stores a rescaled raw weight with power-iteration vectors u, v.

    Returns:
        The official state dict, and a copy of ``model`` holding the weights it must convert to
        (``weight_orig / (u^T W v)``).
    """
    gen = torch.Generator().manual_seed(seed)
    expected = copy.deepcopy(model)
    ours: dict[str, torch.Tensor] = dict(model.state_dict())
    names = {id(m): n for n, m in expected.named_modules()}
    for conv in expected.spectral_norm_convs():
        prefix = names[id(conv)] + "."
        raw = ours.pop(prefix + "weight") * (0.5 + 3 * torch.rand((), generator=gen))
        matrix = raw.reshape(raw.shape[0], -1)
        v = F.normalize(torch.randn(matrix.shape[1], generator=gen), dim=0)
        for _ in range(3):
            u = F.normalize(matrix @ v, dim=0)
            v = F.normalize(matrix.t() @ u, dim=0)
        ours.update({prefix + "weight_orig": raw, prefix + "weight_u": u, prefix + "weight_v": v})
        with torch.no_grad():
            conv.weight.copy_(raw / (u @ matrix @ v))
    official = rename_keys(ours, _reverse(OFFICIAL_FACE_MODULES), _reverse(OFFICIAL_FACE_INNER))
    return OrderedDict(official), expected


def test_converter_renames_and_folds() -> None:
    official, expected = _official_layout(_tiny_generator(64))
    assert is_official_face_generator(official)
    for key in (
        "fc.weight",
        "head_0.norm_0.param_free_norm.running_mean",
        "G_middle_1.norm_1.mlp_shared.0.weight",
        "up_0.conv_s.weight_orig",
        "up_3.norm_s.mlp_gamma.weight",
        "conv_img.bias",
    ):
        assert key in official, key
    converted = face_generator_from_official(official, load_size=64)
    assert converted.config == expected.config
    state, reference = converted.state_dict(), expected.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=1e-6, atol=0, msg=key)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(converted(x), expected(x), rtol=0, atol=1e-6)


def test_converter_accepts_files_without_weight_v_or_batch_counters() -> None:
    """Pre-1.0 PyTorch files store the normalised ``weight`` instead of ``weight_v`` and no counters."""
    official, reference = _official_layout(_tiny_generator(64))
    old = OrderedDict()
    for key, value in official.items():
        if key.endswith(("weight_v", "num_batches_tracked")):
            continue
        old[key] = value
        if key.endswith("weight_orig"):
            prefix = key[: -len("weight_orig")]
            sigma = (
                official[prefix + "weight_u"]
                @ value.reshape(value.shape[0], -1)
                @ official[prefix + "weight_v"]
            )
            old[prefix + "weight"] = value / sigma
    converted = face_generator_from_official(old, load_size=64)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(converted(x), reference(x), rtol=0, atol=1e-5)


def test_fold_matches_pytorch_spectral_norm() -> None:
    """Our fold equals torch's eval-mode spectral norm, including torch's own pre-1.0 handling."""
    torch.manual_seed(0)
    conv = torch.nn.utils.spectral_norm(nn.Conv2d(5, 6, 3, padding=1))
    for _ in range(3):
        conv(torch.randn(1, 5, 8, 8))  # power iterations update u and v
    conv.eval()
    x = torch.randn(2, 5, 8, 8)
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    plain = nn.Conv2d(5, 6, 3, padding=1)
    plain.load_state_dict(fold_spectral_norm(state))
    with torch.no_grad():
        expected = conv(x)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-6)

    # Old layout: torch derives weight_v from the stored normalised weight when loading.
    old = OrderedDict((k, v) for k, v in state.items() if k != "weight_v")
    old["weight"] = conv.weight.detach().clone()
    legacy = torch.nn.utils.spectral_norm(nn.Conv2d(5, 6, 3, padding=1))
    legacy.load_state_dict(OrderedDict(old))
    legacy.eval()
    plain.load_state_dict(fold_spectral_norm(old))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), legacy(x), rtol=0, atol=1e-5)


def test_converter_reports_missing_and_mismatched_keys() -> None:
    official, _ = _official_layout(_tiny_generator(64))
    del official["conv_img.bias"]
    with pytest.raises(CheckpointError, match=r"to_rgb\.bias"):
        face_generator_from_official(official, load_size=64)
    official, _ = _official_layout(_tiny_generator(64))
    del official["up_1.conv_0.weight_v"]
    with pytest.raises(CheckpointError, match="weight_v"):
        face_generator_from_official(official, load_size=64)


def test_convert_official_picks_face_roles_by_folder(tmp_path: Path) -> None:
    """Both released face files share keys and shapes; the folder decides 256 vs 512."""
    official, _ = _official_layout(_tiny_generator(64))
    root = tmp_path / "official"
    for name in ("Setting_9_epoch_100", "FaceSR_512"):
        folder = root / "Face_Enhancement" / "checkpoints" / name
        folder.mkdir(parents=True)
        torch.save(official, folder / "latest_net_G.pth")
    written = convert_official(root, tmp_path / "weights")
    assert set(written) == {Component.FACE_256, Component.FACE_512}
    for component, size in ((Component.FACE_256, 256), (Component.FACE_512, 512)):
        model = load_component(written[component], expected=FaceGenerator)
        assert model.config.load_size == size
        assert model.config.base_channels == TINY["base_channels"]


# --- detection and alignment -----------------------------------------------------------------


def test_landmark_model_is_found_without_importing_the_package() -> None:
    path = landmark_model_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 10**6


def test_five_points_truncate_like_the_released_scripts() -> None:
    landmarks = np.zeros((68, 2), dtype=np.int64)
    landmarks[36], landmarks[39] = (10, 21), (13, 22)  # mean (11.5, 21.5) -> (11, 21)
    landmarks[42], landmarks[45] = (-3, 5), (0, 6)  # mean (-1.5, 5.5) -> (-1, 5): towards zero
    landmarks[30], landmarks[48], landmarks[54] = (7, 8), (1, 2), (3, 4)
    expected = [[11, 21], [-1, 5], [7, 8], [1, 2], [3, 4]]
    np.testing.assert_array_equal(five_points(landmarks), expected)
    assert five_points(landmarks).dtype == np.int64


def test_template_points_follow_the_spec() -> None:
    expected = [(89, 108.5), (167, 108.5), (128, 147.5), (104.6, 195.86), (151.4, 195.86)]
    np.testing.assert_allclose(template_points(256), expected, atol=1e-4)
    np.testing.assert_allclose(template_points(512), np.array(expected) * 2, atol=2e-4)
    assert template_points(256).dtype == np.float32


def test_alignment_recovers_a_known_similarity() -> None:
    angle, scale, shift = 0.3, 0.7, np.array([40.0, -12.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = template_points(256).astype(np.float64) @ rotation.T + shift
    matrix = estimate_alignment(points, 256)
    np.testing.assert_allclose(matrix[:2, :2], rotation, atol=1e-6)
    np.testing.assert_allclose(matrix[:2, 2], shift, atol=1e-4)
    assert estimate_alignment(np.full((5, 2), 7), 256) is None


@pytest.mark.parametrize("folder", ALIGNED_FOLDERS)
def test_exactly_one_face_in_each_cropped_photo(folder: str, detector: FaceDetector) -> None:
    counts = {p.name: len(detector(np.asarray(Image.open(p).convert("RGB")))) for p in _photos(folder)}
    assert all(n == 1 for n in counts.values()), counts


def test_group_photos_find_at_least_dlib_with_one_upsampling(detector: FaceDetector) -> None:
    hog = dlib.get_frontal_face_detector()
    found = {}
    for path in _photos("dlib_examples"):
        image = np.asarray(Image.open(path).convert("RGB"))
        found[path.name] = (len(detector(image)), len(hog(image, 1)))
    assert all(ours >= theirs for ours, theirs in found.values()), found
    assert sum(ours for ours, _ in found.values()) > 20


def test_min_face_size_drops_small_faces() -> None:
    image = _photo("dlib_examples/2008_002470.jpg")
    all_faces = FaceDetector(DetectorConfig(upsample=1, min_face_size=0))(image)
    big_faces = FaceDetector(DetectorConfig(upsample=1, min_face_size=50))(image)
    assert len(big_faces) < len(all_faces)
    assert all(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) + 1 >= 50 for f in big_faces)


# --- warp-back -------------------------------------------------------------------------------


def test_histogram_matching() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(match_histograms(image, image), image)
    shifted = np.clip(image.astype(int) // 2 + 60, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(match_histograms(image, shifted), shifted)


def _identity_enhancer(detector: FaceDetector, size: int) -> FaceEnhancer:
    return FaceEnhancer(nn.Identity(), FaceEnhancerConfig(face_size=size), detector=detector)


def _seam(shape: tuple[int, ...], faces: list[DetectedFace], size: int, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` of the edge of a pasted face region (the image border included)."""
    height, w = shape[:2]
    seam = np.zeros((height, w), dtype=bool)
    kernel = np.ones((2 * width + 1, 2 * width + 1), dtype=np.uint8)
    for face in faces:
        matrix = estimate_alignment(face.five_points, size)
        inverse = SimilarityTransform(matrix=np.linalg.inv(matrix))
        covered = coverage_mask(matrix, size, height, w)
        region = warp(covered, inverse, output_shape=(height, w), order=0, preserve_range=True).astype(
            np.uint8
        )
        inner = cv2.erode(region, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        seam |= (cv2.dilate(region, kernel) > 0) & (inner == 0)
    return seam


@pytest.mark.parametrize(
    ("photo", "size"),
    [
        ("kair_real_faces/face_01.png", 256),
        ("deepface/img12.jpg", 256),
        ("dlib_examples/2008_001322.jpg", 256),
        ("deepface/selfie-many-people.jpg", 256),
        ("codeformer_gray/Einstein02.png", 256),
        ("deepface/selfie-many-people.jpg", 512),
    ],
)
def test_identity_round_trip(photo: str, size: int, detector: FaceDetector) -> None:
    """Align -> identity -> colour match -> warp back changes nothing outside a 2-pixel seam.

    The released chain resamples twice (bilinear crop, cubic warp back), which smooths detail finer
    than about two pixels; the photo is band-limited first so only geometry and colour errors
    (a misplaced inverse warp, a shifted mask, a colour cast) could show.
    """
    image = cv2.GaussianBlur(_photo(photo), (0, 0), 2.0)
    result = _identity_enhancer(detector, size)(image)
    assert result.faces, "the test photo must contain a face"
    diff = np.abs(result.image.astype(int) - image).max(axis=2)
    assert (diff > 0).sum() > 0, "nothing was pasted"
    outside = ~_seam(image.shape, result.faces, size)
    assert diff[outside].max() <= 2, f"max diff {diff[outside].max()} outside the seam"


def test_blend_strength_scales_the_change(detector: FaceDetector) -> None:
    image = _photo("kair_real_faces/face_03.png")
    generator = _tiny_generator(ENHANCER_SIZE)
    results = {
        s: FaceEnhancer(generator, FaceEnhancerConfig(blend_strength=s), detector=detector)(
            image
        ).image.astype(int)
        for s in (0.0, 0.5, 1.0)
    }
    np.testing.assert_array_equal(results[0.0], image)
    assert np.abs(results[1.0] - image).max() > 50
    assert np.abs(2 * results[0.5] - (results[1.0] + image)).max() <= 2


def test_paste_of_a_face_half_outside_the_photo() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    points = template_points(256).astype(np.float64) * 0.3 + np.array([-40.0, 60.0])
    matrix = estimate_alignment(points, 256)
    covered = coverage_mask(matrix, 256, 120, 90)
    assert 0.1 < covered.mean() < 0.9
    result = warp_back(image, [face], [matrix])
    x0, y0, x1, y1 = paste_box(matrix, 256, 120, 90)
    assert x0 == 0 and y1 == 120 and x1 < 90
    changed_rows, changed_cols = np.nonzero((result != image).any(axis=2))
    assert changed_cols.size > 0 and changed_cols.max() < x1 and changed_rows.min() >= y0
    np.testing.assert_array_equal(result[:, x1:], image[:, x1:])


# --- FaceEnhancer on awkward photos ----------------------------------------------------------


def test_no_face(tiny_enhancer: FaceEnhancer) -> None:
    rng = np.random.default_rng(0)
    for image in (np.full((200, 300, 3), 128, np.uint8), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)):
        result = tiny_enhancer(image)
        assert result.faces == [] and result.boxes == []
        np.testing.assert_array_equal(result.image, image)
        assert result.image is not image


def test_many_faces_in_batches(detector: FaceDetector) -> None:
    image = _photo("dlib_examples/2007_007763.jpg")
    calls = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _tiny_generator(ENHANCER_SIZE)
            self.config = self.inner.config

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return self.inner(x)

    counting = Counting()
    result = FaceEnhancer(counting, FaceEnhancerConfig(batch_size=3), detector=detector)(image)
    assert len(result.faces) >= 5
    assert calls == [3] * (len(result.faces) // 3) + (
        [len(result.faces) % 3] if len(result.faces) % 3 else []
    )
    single = FaceEnhancer(counting.inner, FaceEnhancerConfig(batch_size=1), detector=detector)(image)
    assert np.abs(single.image.astype(int) - result.image).max() <= 1
    untouched = np.ones(image.shape[:2], dtype=bool)
    for face in result.faces:
        matrix = estimate_alignment(face.five_points, ENHANCER_SIZE)
        x0, y0, x1, y1 = paste_box(matrix, ENHANCER_SIZE, *image.shape[:2])
        untouched[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(result.image[untouched], image[untouched])


def test_face_cut_by_the_border(tiny_enhancer: FaceEnhancer) -> None:
    image = _photo("deepface/selfie-many-people.jpg")
    result = tiny_enhancer(image)
    assert any(min(box[:2]) < 0 for box in result.boxes), "the photo should have a face cut by the border"
    assert result.image.shape == image.shape and result.image.dtype == np.uint8


def test_grayscale_photos(tiny_enhancer: FaceEnhancer) -> None:
    gray = _photo("codeformer_gray/Hepburn02.png", mode="L")
    for image in (gray, gray[..., None], np.repeat(gray[..., None], 3, axis=2)):
        result = tiny_enhancer(image)
        assert len(result.faces) == 1
        assert result.image.shape == (*gray.shape, 3) and result.image.dtype == np.uint8


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (7, 5), (31, 29, 3), (60, 1, 3)])
def test_tiny_photos(shape: tuple[int, ...], tiny_enhancer: FaceEnhancer) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    result = tiny_enhancer(image)
    assert result.faces == []
    expected = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    np.testing.assert_array_equal(result.image, expected)


def test_rejects_images_it_cannot_read(tiny_enhancer: FaceEnhancer) -> None:
    with pytest.raises(TypeError):
        tiny_enhancer(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        tiny_enhancer(np.zeros((8, 8, 4), dtype=np.uint8))


def test_enhancer_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        FaceEnhancerConfig(blend_strength=1.5)
    with pytest.raises(ValueError):
        FaceEnhancerConfig(batch_size=0)
    with pytest.raises(ValueError, match="face_size"):
        FaceEnhancer(nn.Identity(), FaceEnhancerConfig(), detector=object())  # type: ignore[arg-type]


def test_faces_far_larger_than_the_generator_are_left_alone(detector: FaceDetector) -> None:
    """A face needing more than max_upscale x enlargement keeps its own detail; smaller ones are enhanced."""
    image = _photo("kair_real_faces/face_03.png")
    generator = _tiny_generator(ENHANCER_SIZE)
    face = detector(image)[0]
    upscale = float(np.sqrt(abs(np.linalg.det(estimate_alignment(face.five_points, ENHANCER_SIZE)[:2, :2]))))
    kept = FaceEnhancer(generator, FaceEnhancerConfig(max_upscale=upscale * 0.9), detector=detector)(image)
    np.testing.assert_array_equal(kept.image, image)
    assert kept.faces == []
    enhanced = FaceEnhancer(generator, FaceEnhancerConfig(max_upscale=upscale * 1.1), detector=detector)(
        image
    )
    assert len(enhanced.faces) == 1
    assert np.abs(enhanced.image.astype(int) - image).max() > 50


def test_run_logs_the_faces_it_found_and_enhanced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The built-in global stage keeps the face recognisable; a tiny face model is added to its weights."""
    import shutil

    from latent_restore.cli import main
    from latent_restore.core.checkpoint import save_component
    from latent_restore.weights import default_weights_dir

    weights = tmp_path / "weights"
    shutil.copytree(default_weights_dir(), weights)
    shutil.rmtree(weights / "face_256", ignore_errors=True)
    save_component(_tiny_generator(64), weights / "face_256")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_photo("kair_real_faces/face_03.png")).resize((120, 117)).save(photos / "portrait.png")
    Image.fromarray(np.full((64, 80, 3), 120, np.uint8)).save(photos / "wall.png")
    with caplog.at_level(logging.INFO):
        code = main(
            ["run", "--input", str(photos), "--output", str(tmp_path / "out"), "--weights", str(weights)]
        )
    assert code == 0
    lines = {
        r.getMessage().split(" ->")[0]: r.getMessage() for r in caplog.records if " -> " in r.getMessage()
    }
    assert "1 face enhanced at" in lines["portrait.png"]
    assert "0 faces enhanced" in lines["wall.png"]
    assert any("found 1 face(s)" in r.getMessage() for r in caplog.records)


def test_residual_generator_starts_as_identity_and_every_parameter_learns() -> None:
    config = FaceGeneratorConfig(
        load_size=32, base_channels=4, spade_hidden_channels=4, num_upsamples=3, residual=True
    )
    generator = FaceGenerator(config)
    face = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(generator(face), face, rtol=0, atol=0)
    assert generator(F.interpolate(face, size=(48, 40))).shape == face.shape
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    target = face.flip(-1)
    for _ in range(2):  # the zero output layer learns first, then the rest receives gradients
        optimizer.zero_grad()
        (generator(face) - target).abs().mean().backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
    assert not torch.equal(generator(face), face)
    with pytest.raises(ValueError, match="residual"):
        FaceGenerator(FaceGeneratorConfig(load_size=32, out_channels=1, num_upsamples=3, residual=True))


def test_mirror_average_ensembles_only_in_eval_mode() -> None:
    config = FaceGeneratorConfig(load_size=32, base_channels=4, spade_hidden_channels=4, num_upsamples=3)
    torch.manual_seed(0)
    plain = FaceGenerator(config).eval()
    mirrored = FaceGenerator(dataclasses.replace(config, mirror_average=True))
    mirrored.load_state_dict(plain.state_dict())
    face = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        one, flipped = plain(face), plain(face.flip(-1)).flip(-1)
        assert not torch.allclose(one, flipped)  # the network is not symmetric by itself
        torch.testing.assert_close(mirrored.eval()(face), (one + flipped) / 2)
        torch.testing.assert_close(mirrored.train()(face), plain.train()(face))  # training: one pass
        plain.eval()
        # the ensemble is mirror-equivariant: a mirrored face gives the mirrored result
        torch.testing.assert_close(mirrored.eval()(face.flip(-1)), mirrored(face).flip(-1))
