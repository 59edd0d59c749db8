"""Equivalence with the released implementation: face generators, alignment and warp-back.

One test per ``face_*`` file of ``$LATENT_RESTORE_FIXTURES/index.json``. Generator fixtures build
the released checkpoint by the fixture rule (salt from the index), convert it with
``latent-restore convert`` and run our generator; the alignment fixture runs detection, alignment
and warp-back from the raw photo and compares every intermediate. Sizes and face counts come from
the fixture itself, so another fixture set made the same way runs unchanged.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import fixture_dir, fixture_entries, fixture_index
from PIL import Image
from tolerances import assert_bounded_close, assert_exact, assert_geometry_close, assert_uint8_close

from face_enhance.alignment import align_face, estimate_alignment, reference_crop
from face_enhance.blending import match_histograms, warp_back
from face_enhance.detection import OFFICIAL_DETECTOR, FaceDetector
from face_enhance.enhancer import saved_face
from face_enhance.generator import FaceGenerator
from latent_restore.core.checkpoint import load_component
from latent_restore.core.imaging import to_tensor
from latent_restore.weights import Component

pytestmark = pytest.mark.fixtures

HEAVY_PIXELS = 512 * 512
"""Generator fixtures with outputs this large take over 20 s on two CPU cores."""


def _params() -> list:
    index = fixture_index()
    params = []
    for name in fixture_entries(("face_",)):
        if not isinstance(name, str):  # the "no fixtures" skip
            params.append(name)
            continue
        shape = index[name].get("arrays", {}).get("output", {}).get("shape")
        heavy = shape is not None and shape[-1] * shape[-2] >= HEAVY_PIXELS
        params.append(pytest.param(name, id=name, marks=[pytest.mark.slow] if heavy else []))
    return params


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def check_generator(fx: dict, entry: dict, official_weights) -> None:
    weights = official_weights(entry["checkpoints"], entry["salt"])
    found = [
        weights / c.value for c in (Component.FACE_256, Component.FACE_512) if (weights / c.value).is_dir()
    ]
    assert len(found) == 1, f"expected one face component, got {found}"
    generator = load_component(found[0], expected=FaceGenerator)
    size = generator.config.load_size
    # test_face.py: PIL bicubic resize to load_size (a no-op for crops of that size), image range.
    face = Image.fromarray(fx["aligned_face_uint8"]).resize((size, size), Image.Resampling.BICUBIC)
    image = to_tensor(np.asarray(face))
    if "input" in fx:
        # The recorded network input is what the generator is judged on (it takes any size);
        # our preprocessing is checked only where it makes the same size.
        if fx["input"].shape == tuple(image.shape):
            assert_exact(image, fx["input"], "input")
        image = torch.from_numpy(fx["input"])
    with torch.no_grad():
        output = generator(image)
    assert_bounded_close(output, fx["output"], "output")
    assert_uint8_close(saved_face(output)[0], fx["saved_png_uint8"], "saved_png_uint8")


def _per_face(array: np.ndarray, count: int) -> list[np.ndarray]:
    """Arrays stored once for all faces (``S x S x 3``) or per face (``faces x S x S x 3``)."""
    return list(array) if array.ndim == 4 else [array] * count


def check_align_warpback(fx: dict, entry: dict, _official_weights) -> None:
    image = fx["image_uint8"]
    faces = FaceDetector(OFFICIAL_DETECTOR)(image)
    count = len(fx["landmarks68"])
    assert len(faces) == count == entry.get("num_faces", count)
    if "dlib_face_rect_ltrb" in entry:
        boxes = np.array(entry["dlib_face_rect_ltrb"]).reshape(-1, 4)
        assert_exact(np.array([f.box for f in faces])[: len(boxes)], boxes, "dlib_face_rect_ltrb")
    assert_exact(np.stack([f.landmarks for f in faces]), fx["landmarks68"], "landmarks68")
    points = np.stack([f.five_points for f in faces])
    assert_geometry_close(points, fx["five_points"], "five_points")

    for key in fx:
        if match := re.fullmatch(r"affine(\d+)_params", key):
            size = int(match.group(1))
            assert_geometry_close(estimate_alignment(points[0], size), fx[key], key)
        if match := re.fullmatch(r"aligned(\d+)_as_saved_uint8", key):
            size = int(match.group(1))
            crop = align_face(image, estimate_alignment(points[0], size), size)
            assert_uint8_close(crop, fx[key], key)

    restored = _per_face(fx["restored_face_uint8"], count)
    size = restored[0].shape[0]
    matrices = [estimate_alignment(p, size) for p in points]
    assert_geometry_close(np.stack(matrices), fx["affine_template_to_image"], "affine_template_to_image")
    for k, matrix in enumerate(matrices):
        reference = reference_crop(image, matrix, size)
        assert_bounded_close(reference, fx["aligned_face_float"][k], f"aligned_face_float[{k}]", atol=1e-4)
        matched = match_histograms(restored[k], reference.astype(np.uint8))
        assert_uint8_close(matched, fx["hist_matched_face_uint8"][k], f"hist_matched_face_uint8[{k}]")
    assert_uint8_close(warp_back(image, restored, matrices), fx["final_uint8"], "final_uint8")


@pytest.mark.parametrize("name", _params())
def test_face_fixture(name: str, official_weights) -> None:
    entry = fixture_index()[name]
    with np.load(fixture_dir() / name) as data:
        fx = {k: data[k] for k in data.files}
    if "output" in fx:
        check_generator(fx, entry, official_weights)
    elif "final_uint8" in fx:
        check_align_warpback(fx, entry, official_weights)
    else:
        pytest.fail(f"no check for face fixture {name} (arrays: {sorted(fx)})")
