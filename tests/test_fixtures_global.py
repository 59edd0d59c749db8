"""Equivalence with the released implementation: global restoration and scratch detection.

One test per fixture file of ``$LATENT_RESTORE_FIXTURES/index.json``. Each builds the released
checkpoints by the fixture rule (with the salt the index records), saves them in the official
layout, converts them with ``latent-restore convert``, loads our components and runs the whole
path from the raw image, comparing every intermediate the fixture provides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fixture_dir, fixture_entries, fixture_index
from PIL import Image
from tolerances import assert_bounded_close, assert_exact, assert_latent_close, assert_uint8_close

from latent_restore import official
from latent_restore.core.checkpoint import load_component
from latent_restore.core.imaging import to_tensor
from latent_restore.weights import Component
from stage2_mapping.nonlocal_block import validity_map
from stage2_mapping.patch_attention import hole_map, match_patches

pytestmark = pytest.mark.fixtures

GLOBAL_ENTRIES = fixture_entries(("global_", "detection_"))


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _weights(official_weights, entry: dict) -> Path:
    return official_weights(entry["checkpoints"], entry["salt"])


def _stage1(weights: Path, net: torch.nn.Module, vae_b: Component, image: torch.Tensor, mask, fx) -> None:
    vae_a = load_component(weights / Component.VAE_A.value)
    decoder = load_component(weights / vae_b.value)
    with torch.no_grad():
        latent = vae_a.encode(image)
        mapped = net(latent, mask)
        output = decoder.decode(mapped)
    assert_latent_close(latent, fx["latent_A"], "latent_A")
    assert_latent_close(mapped, fx["latent_mapped"], "latent_mapped")
    assert_bounded_close(output, fx["output"], "output")
    assert_uint8_close(official.saved_restoration(output), fx["saved_png_uint8"], "saved_png_uint8")


def _recorded(fx: dict, key: str, ours: torch.Tensor) -> torch.Tensor:
    """The network input the fixture recorded, fed as is (the networks are judged on it); ours
    when the fixture has none. Our preprocessing is compared with it separately."""
    return torch.from_numpy(fx[key]) if key in fx else ours


def check_global_quality(fx, entry, weights):
    raw = Image.fromarray(fx["raw_image_uint8"])
    resized = np.asarray(official.resize_full_mode(raw))
    assert list(official.full_mode_size(*raw.size)) == entry["full_mode_size_WxH"]
    if "scale_mode_size_WxH" in entry:
        assert list(official.scale_mode_size(*raw.size)) == entry["scale_mode_size_WxH"]
    assert_uint8_close(resized, fx["full_mode_image_uint8"], "full_mode_image_uint8")
    image = to_tensor(resized)
    assert_exact(image, fx["input"], "input")
    net = load_component(weights / Component.MAPPING_QUALITY.value)
    _stage1(weights, net, Component.VAE_B_QUALITY, _recorded(fx, "input", image), None, fx)


def check_global_scratch(fx, entry, weights):
    prepared = official.prepare_scratch_input(fx["raw_image_uint8"], fx["raw_mask_uint8"], hr=False)
    assert_exact(prepared.hole_image, fx["hole_image_uint8"], "hole_image_uint8")
    assert_exact(prepared.image, fx["input"], "input")
    assert_exact(prepared.mask, fx["mask"], "mask")
    valid = validity_map(prepared.mask, tuple(fx["latent_A"].shape[-2:]))
    assert_exact(valid, fx["nl_valid"], "nl_valid")
    net = load_component(weights / Component.MAPPING_SCRATCH.value)
    image, mask = _recorded(fx, "input", prepared.image), _recorded(fx, "mask", prepared.mask)
    _stage1(weights, net, Component.VAE_B_SCRATCH, image, mask, fx)


def check_global_hr(fx, entry, weights):
    prepared = official.prepare_scratch_input(fx["raw_image_uint8"], fx["raw_mask_uint8"], hr=True)
    assert_exact(prepared.mask_uint8, fx["dilated_mask_uint8"], "dilated_mask_uint8")
    assert_exact(prepared.hole_image, fx["hole_image_uint8"], "hole_image_uint8")
    assert_exact(prepared.image, fx["input"], "input")
    assert_exact(prepared.mask, fx["mask"], "mask")

    decisions = []
    net = load_component(weights / Component.MAPPING_HR.value)

    def record(module, args):
        z, mask = args
        x = module.block(z)
        holes = hole_map(mask, (z.shape[-2], z.shape[-1]))
        decisions.append(match_patches(x[0], holes[0, 0], module.patch_size))

    hooks = [a.register_forward_pre_hook(record) for a in net.attention]
    try:
        image, mask = _recorded(fx, "input", prepared.image), _recorded(fx, "mask", prepared.mask)
        _stage1(weights, net, Component.VAE_B_SCRATCH, image, mask, fx)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(decisions) == len(net.attention)
    for k, (flags, sources) in enumerate(decisions, start=1):
        assert_exact(flags.to(torch.uint8), fx[f"pa_scale{k}_hole_patch_flags"], f"scale {k} hole flags")
        assert_exact(sources, fx[f"pa_scale{k}_source_patch_for_each_hole_patch"], f"scale {k} sources")


def check_detection_raw(fx, entry, weights):
    detector = load_component(weights / Component.SCRATCH_DETECTOR.value)
    image = to_tensor(fx["gray_uint8"])
    assert_exact(image, fx["input"], "input")
    with torch.no_grad():
        assert_latent_close(detector(_recorded(fx, "input", image)), fx["logits"], "logits")


def check_detection_pipeline(fx, entry, weights):
    detector = load_component(weights / Component.SCRATCH_DETECTOR.value)
    result = official.detect_scratches(detector, Image.fromarray(fx["raw_image_uint8"]))
    assert_uint8_close(result.full_size_image, fx["full_size_image_uint8"], "full_size_image_uint8")
    assert_uint8_close(result.gray, fx["gray_uint8"], "gray_uint8")
    assert_bounded_close(result.net_input, fx["net_input"], "net_input", atol=1e-5)
    assert_bounded_close(result.prob, fx["prob"], "prob")
    assert_bounded_close(result.prob_full_size, fx["prob_full_size"], "prob_full_size")
    near = np.abs(fx["prob_full_size"] - official.DETECTION_THRESHOLD) < 1e-4
    ours = result.mask.numpy()
    assert_exact(ours[~near], fx["mask_binary"][~near], "mask_binary")
    assert_uint8_close(result.saved_mask, fx["saved_mask_png_uint8"], "saved_mask_png_uint8")


CHECKS = {
    "global_quality": check_global_quality,
    "global_scratch": check_global_scratch,
    "global_hr": check_global_hr,
    "detection_raw": check_detection_raw,
    "detection_pipeline": check_detection_pipeline,
}


@pytest.mark.parametrize("name", GLOBAL_ENTRIES)
def test_global_fixture(name: str, official_weights) -> None:
    entry = fixture_index()[name]
    kind = next((k for k in CHECKS if name.startswith(k)), None)
    assert kind is not None, f"no check for fixture {name}"
    with np.load(fixture_dir() / name) as data:
        fx = {k: data[k] for k in data.files}
    CHECKS[kind](fx, entry, _weights(official_weights, entry))
