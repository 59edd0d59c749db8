"""Image listing/loading helpers and the training datasets: determinism in (seed, epoch, index),
value ranges, shapes, the §8.1 augmentations and masks that stay aligned with the images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DATA
from PIL import Image

from face_enhance.data import FacePairDataset
from latent_restore.core.data import (
    CleanImageDataset,
    epoch_file_index,
    fit_short_side,
    list_images,
    load_rgb,
    random_crop,
    random_hflip,
    resize_short_side,
    sample_rng,
    to_grayscale,
)
from latent_restore.core.degradations import DegradationConfig
from stage1_vae.data import DomainADataset
from stage2_mapping.data import MappingPairDataset, ScratchDetectionDataset

CROP = 24


def _pattern(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 7 % 256, yy * 5 % 256, (xx * yy) % 256], -1).astype(float)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _photometric_off() -> DegradationConfig:
    """A config with every photometric op off (defects keep their defaults)."""
    config = DegradationConfig()
    groups = {
        f.name: dataclasses.replace(getattr(config, f.name), prob=0.0)
        for f in dataclasses.fields(config)
        if f.name not in ("shuffle", "defects")
    }
    return dataclasses.replace(config, **groups)


def _equal_items(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clean"
    folder.mkdir()
    Image.fromarray(_pattern(40, 50, 0)).save(folder / "a.png")
    Image.fromarray(_pattern(30, 36, 1)).save(folder / "b.png")
    Image.fromarray(_pattern(12, 20, 2)).save(folder / "small.png")
    return folder


@pytest.fixture
def real_dirs(tmp_path: Path) -> list[Path]:
    gray, colour = tmp_path / "real_gray", tmp_path / "real_rgb"
    gray.mkdir()
    colour.mkdir()
    Image.fromarray(to_grayscale(_pattern(32, 32, 3))[..., 0]).save(gray / "g.png")
    Image.fromarray(_pattern(28, 40, 4)).save(colour / "c.jpg")
    return [gray, colour]


# Files and helpers


def test_list_images_sorted_filtered_and_recursive(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".cache").mkdir()
    for name in ("b.png", "A.JPG", "sub/c.bmp", "sub/d.TIFF", ".hidden.png", ".cache/e.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["A.JPG", "b.png", "sub/c.bmp", "sub/d.TIFF"]
    assert [p.name for p in list_images([tmp_path], recursive=False)] == ["A.JPG", "b.png"]
    assert len(list_images([tmp_path, tmp_path / "sub"])) == 4
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.fromarray(_pattern(10, 30, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_rgb(tmp_path / "rot.jpg")
    assert loaded.shape == (30, 10, 3) and loaded.dtype == np.uint8


def test_load_rgb_converts_every_mode_to_rgb(tmp_path: Path) -> None:
    gray = _pattern(6, 8, 0)[..., 0]
    Image.fromarray(gray).save(tmp_path / "l.png")
    assert np.array_equal(load_rgb(tmp_path / "l.png"), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = load_rgb(tmp_path / "a.png")
    assert loaded[0, 0].tolist() == [200, 0, 0] and loaded[3, 3].tolist() == [255, 255, 255]
    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = load_rgb(tmp_path / "deep.png")
    assert loaded[0, 0, 0] == 0 and loaded[3, 3, 0] == 255 and loaded[1, 2, 0] == 102
    Image.fromarray(_pattern(5, 5, 1)).convert("P").save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").shape == (5, 5, 3)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(OSError):
        load_rgb(tmp_path / "bad.png")


def test_sample_rng_is_a_function_of_seed_epoch_index() -> None:
    draw = lambda *key: sample_rng(*key).integers(0, 2**62, 4).tolist()  # noqa: E731
    assert draw(1, 2, 3) == draw(1, 2, 3)
    assert len({tuple(draw(*k)) for k in [(1, 2, 3), (1, 2, 4), (1, 3, 3), (2, 2, 3), (3, 2, 1)]}) == 5
    with pytest.raises(ValueError):
        sample_rng(-1, 0, 0)


def test_epoch_file_index_visits_every_file_once_per_cycle() -> None:
    order = [epoch_file_index(0, 0, i, 5) for i in range(10)]
    assert sorted(order[:5]) == sorted(order[5:]) == list(range(5))
    epochs = {tuple(epoch_file_index(0, e, i, 7) for i in range(7)) for e in range(4)}
    assert len(epochs) > 1


def test_crop_upscales_small_images_and_flip_mirrors() -> None:
    small = _pattern(10, 20, 0)
    fitted = fit_short_side(small, CROP)
    assert fitted.shape == (CROP, 48, 3)
    assert fit_short_side(fitted, CROP) is fitted
    assert random_crop(small, CROP, np.random.default_rng(0)).shape == (CROP, CROP, 3)
    image = _pattern(5, 7, 1)
    flips = [random_hflip(image, np.random.default_rng(s)) for s in range(20)]
    mirrored = [np.array_equal(f, image[:, ::-1]) for f in flips]
    kept = [np.array_equal(f, image) for f in flips]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)


def test_crop_redraws_flat_placements() -> None:
    # A white photo with one textured corner: most placements are flat, re-drawing finds the corner.
    image = np.full((256, 256, 3), 255, np.uint8)
    image[:96, :96] = _pattern(96, 96, 2)
    crops = [random_crop(image, CROP, np.random.default_rng(s)) for s in range(20)]
    textured = sum(float(c.reshape(-1, 3).std(0).max()) >= 1.0 for c in crops)
    # One placement in six overlaps the corner; with up to eight tries three crops in four do.
    assert textured >= 10
    # An entirely flat photo still gives a crop (the last placement) instead of looping.
    flat = np.full((100, 100, 3), 7, np.uint8)
    assert (random_crop(flat, CROP, np.random.default_rng(0)) == 7).all()


def test_to_grayscale_matches_pil() -> None:
    image = _pattern(9, 11, 5)
    expected = np.asarray(Image.fromarray(image).convert("L"))
    gray = to_grayscale(image)
    assert np.array_equal(gray[..., 0], expected) and np.array_equal(gray[..., 2], expected)


# Datasets


def _check_determinism(make, length: int = 4) -> None:
    """Same (seed, epoch, index) -> same item, also from a fresh instance; other epochs and seeds differ."""
    dataset = make(seed=3)
    first = [dataset[i] for i in range(length)]
    assert all(_equal_items(a, b) for a, b in zip(first, [dataset[i] for i in range(length)], strict=True))
    fresh = make(seed=3)
    assert all(_equal_items(fresh[i], first[i]) for i in range(length))
    dataset.set_epoch(1)
    assert not all(_equal_items(dataset[i], first[i]) for i in range(length))
    dataset.set_epoch(0)
    assert all(_equal_items(dataset[i], first[i]) for i in range(length))
    other = make(seed=4)
    assert not all(_equal_items(other[i], first[i]) for i in range(length))


def _check_range(tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(tensor.shape) == shape and tensor.dtype == torch.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


def test_clean_dataset(clean_dir: Path) -> None:
    make = lambda seed: CleanImageDataset(clean_dir, CROP, seed=seed, length=7)  # noqa: E731
    dataset = make(0)
    assert len(dataset) == 7 and len(CleanImageDataset(clean_dir, CROP)) == 3
    for i in range(len(dataset)):
        _check_range(dataset[i]["image"], (3, CROP, CROP))
    _check_determinism(make)
    with pytest.raises(IndexError):
        dataset[7]


def test_grayscale_probability(clean_dir: Path) -> None:
    always = CleanImageDataset(clean_dir, CROP, seed=0, length=6, grayscale_prob=1.0)
    never = CleanImageDataset(clean_dir, CROP, seed=0, length=6, grayscale_prob=0.0)
    for i in range(6):
        image = always[i]["image"]
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        assert not torch.equal(never[i]["image"][0], never[i]["image"][1])


def test_domain_a_mixes_real_and_synthetic(clean_dir: Path, real_dirs: list[Path]) -> None:
    def make(seed: int, fraction: float = 0.5) -> DomainADataset:
        return DomainADataset(clean_dir, real_dirs, CROP, seed=seed, length=24, real_fraction=fraction)

    flags = [bool(make(0)[i]["is_real"]) for i in range(24)]
    assert 4 <= sum(flags) <= 20
    assert all(make(0, 1.0)[i]["is_real"].item() for i in range(6))
    assert not any(make(0, 0.0)[i]["is_real"].item() for i in range(6))
    item = make(0)[0]
    _check_range(item["image"], (3, CROP, CROP))
    assert item["is_real"].dtype == torch.bool and item["is_real"].shape == ()
    _check_determinism(make)
    with pytest.raises(ValueError):
        DomainADataset(clean_dir, [], CROP, real_fraction=0.5)


def test_domain_a_synthetic_has_no_scratches_unless_asked(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.full((CROP, CROP, 3), 128, np.uint8)).save(flat / "gray.png")
    config = _photometric_off()
    assert config.defects.enabled
    plain = DomainADataset(flat, [], CROP, degradation=config, length=8, real_fraction=0.0)
    assert all(torch.all(plain[i]["image"] == plain[i]["image"][0, 0, 0]) for i in range(8))
    scratched = DomainADataset(
        flat, [], CROP, degradation=config, length=8, real_fraction=0.0, with_scratches=True
    )
    assert all(not torch.all(scratched[i]["image"] == scratched[i]["image"][0, 0, 0]) for i in range(8))


def test_mapping_pairs_without_scratches(clean_dir: Path) -> None:
    make = lambda seed: MappingPairDataset(clean_dir, CROP, seed=seed, length=6)  # noqa: E731
    dataset = make(0)
    for i in range(6):
        item = dataset[i]
        _check_range(item["degraded"], (3, CROP, CROP))
        _check_range(item["clean"], (3, CROP, CROP))
        assert item["mask"].shape == (1, CROP, CROP) and not item["mask"].any()
    assert any(not torch.equal(dataset[i]["degraded"], dataset[i]["clean"]) for i in range(6))
    _check_determinism(make)


def test_mapping_mask_is_aligned_with_flipped_images(tmp_path: Path) -> None:
    folder = tmp_path / "halves"
    folder.mkdir()
    halves = np.zeros((CROP, CROP, 3), np.uint8)
    halves[:, CROP // 2 :] = 200
    Image.fromarray(halves).save(folder / "halves.png")
    dataset = MappingPairDataset(
        folder, CROP, degradation=_photometric_off(), length=24, with_scratches=True, grayscale_prob=0.0
    )
    flipped, empty = 0, 0
    for i in range(len(dataset)):
        item = dataset[i]
        clean, degraded, mask = item["clean"], item["degraded"], item["mask"][0].bool()
        flipped += bool(clean[0, 0, 0] > 0)
        empty += not mask.any()
        assert torch.equal(mask, (degraded != clean).any(dim=0))
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
    assert 3 <= flipped <= 21, "flips should happen about half the time"
    assert 4 <= empty <= 20, "about half the scratch samples should have no defects"


def test_scratch_detection_dataset(clean_dir: Path) -> None:
    make = lambda seed: ScratchDetectionDataset(clean_dir, CROP, seed=seed, length=6)  # noqa: E731
    dataset = make(0)
    masks = []
    for i in range(6):
        item = dataset[i]
        _check_range(item["image"], (1, CROP, CROP))
        assert item["mask"].shape == (1, CROP, CROP)
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        masks.append(item["mask"])
    assert sum(bool(m.any()) for m in masks) >= 5
    _check_determinism(make)


def _stains_only() -> DegradationConfig:
    """Photometric ops off and stains as the only defect kind."""
    config = _photometric_off()
    kinds = {
        f.name: dataclasses.replace(getattr(config.defects, f.name), prob=0.0)
        for f in dataclasses.fields(config.defects)
        if f.name not in ("enabled", "at_least_one", "stains")
    }
    stains = dataclasses.replace(config.defects.stains, prob=1.0)
    return dataclasses.replace(config, defects=dataclasses.replace(config.defects, stains=stains, **kinds))


def test_rgb_scratch_detection_samples_show_the_stains_tint(tmp_path: Path) -> None:
    """channels=3 keeps colour, so a stain is brown on the sample; channels=1 leaves one gray channel."""
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(np.full((48, 48, 3), (200, 190, 180), np.uint8)).save(folder / "flat.png")
    make = lambda channels, gray: ScratchDetectionDataset(  # noqa: E731
        folder, 32, degradation=_stains_only(), length=4, channels=channels, grayscale_prob=gray
    )
    for i in range(4):
        item = make(3, 0.0)[i]
        image, mask = (item["image"].permute(1, 2, 0).numpy() + 1) * 127.5, item["mask"][0].numpy() > 0
        assert item["image"].shape == (3, 32, 32) and mask.any() and not mask.all()
        assert np.allclose(image[~mask], (200, 190, 180), atol=0.01)
        red, blue = image[mask][:, 0], image[mask][:, 2]
        assert np.all(blue / red < 180 / 200), "a stain absorbs blue more than red"
        gray = make(3, 1.0)[i]["image"]
        assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
        assert make(1, 0.0)[i]["image"].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="channels"):
        ScratchDetectionDataset(folder, 32, channels=2)


def test_scratch_detection_view_shows_the_photo_at_the_detector_scale(tmp_path: Path) -> None:
    """With view_size the crop is a window of the photo resized to that short side, not of the photo."""
    folder = tmp_path / "large"
    folder.mkdir()
    yy, xx = np.mgrid[0:96, 0:144]
    photo = np.stack([(xx * 255 // 143), (yy * 255 // 95), ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(folder / "large.png")
    view = to_grayscale(resize_short_side(photo, 32))[..., 0].astype(np.float32) / 127.5 - 1.0
    windows = np.lib.stride_tricks.sliding_window_view(view, (16, 16)).reshape(-1, 16, 16)
    dataset = ScratchDetectionDataset(
        folder, 16, degradation=_photometric_off(), length=8, no_defect_prob=1.0, view_size=32
    )
    for i in range(len(dataset)):
        item = dataset[i]
        crop = item["image"][0].numpy()
        assert not item["mask"].any()
        distance = min(np.abs(windows - c).max(axis=(1, 2)).min() for c in (crop, crop[:, ::-1]))
        assert distance < 1e-6, "the crop is no window of the resized photo"
    with pytest.raises(ValueError, match="view_size"):
        ScratchDetectionDataset(folder, 16, view_size=8)


def test_face_pairs(tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(_pattern(48, 64, 0)).save(folder / "wide.png")
    Image.fromarray(_pattern(20, 20, 1)).save(folder / "small.png")
    make = lambda seed: FacePairDataset(folder, 32, seed=seed, length=4)  # noqa: E731
    dataset = make(0)
    for i in range(4):
        item = dataset[i]
        _check_range(item["degraded"], (3, 32, 32))
        _check_range(item["clean"], (3, 32, 32))
    _check_determinism(make)


def test_datasets_on_shared_photos() -> None:
    clean, real, faces = DATA / "clean" / "Set5", DATA / "real_old", DATA / "faces" / "codeformer_gray"
    if not (clean.is_dir() and real.is_dir() and faces.is_dir()):
        pytest.skip("shared data not available")
    domain_a = DomainADataset(clean, [real], 64, seed=0, length=4)
    assert {tuple(domain_a[i]["image"].shape) for i in range(4)} == {(3, 64, 64)}
    pair = FacePairDataset(faces, 64, seed=0, length=1)[0]
    assert pair["clean"].shape == (3, 64, 64)
