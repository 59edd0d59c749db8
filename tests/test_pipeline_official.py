"""The pipeline over weights converted from rule-generated released checkpoints, on real old photos."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DATA, fixture_dir, fixture_entries, fixture_index, needs_shared
from PIL import Image
from tolerances import assert_uint8_close

from latent_restore.cli import main
from latent_restore.core.imaging import quantize
from latent_restore.pipeline import Preset, RestorationOptions, RestorationPipeline

pytestmark = [pytest.mark.fixtures, pytest.mark.slow]

GLOBAL_CHECKPOINTS = [
    "VAE_A_quality",
    "VAE_B_quality",
    "VAE_B_scratch",
    "mapping_quality",
    "mapping_scratch",
    "mapping_Patch_Attention",
    "detection_FT_Epoch_latest",
]
SALT = 424242


@pytest.fixture(scope="module")
def weights(official_weights):
    return official_weights(GLOBAL_CHECKPOINTS, SALT)


def _sizes(folder):
    sizes = {}
    for path in folder.iterdir():
        with Image.open(path) as im:
            sizes[path.stem] = im.size
    return sizes


@pytest.mark.parametrize(
    "source,photos,flags",
    [
        ("real_old", ["bopbtl_old_a.png", "swinir_realsrset_Lincoln.png"], []),
        ("real_old_scratch", ["bopbtl_scratch_b.png"], ["--with-scratch"]),
        ("real_old_scratch", ["bopbtl_scratch_b.png"], ["--with-scratch", "--hr"]),
    ],
)
@needs_shared("data/real_old", "data/real_old_scratch", "spec/fixtures/make_weights.py")
def test_run_restores_real_photos_at_their_size(tmp_path, weights, source, photos, flags) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in photos:
        (inputs / name).symlink_to(DATA / source / name)
    code = main(
        [
            "run",
            "--quiet",
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "out"),
            "--weights",
            str(weights),
            *flags,
        ]
    )
    assert code == 0
    expected = {name.rsplit(".", 1)[0]: Image.open(DATA / source / name).size for name in photos}
    assert _sizes(tmp_path / "out") == expected


@pytest.mark.parametrize("name", fixture_entries(("global_quality",)))
def test_official_preset_reproduces_released_stage1_file(name, official_weights) -> None:
    entry = fixture_index()[name]
    with np.load(fixture_dir() / name) as fx:
        raw, saved = fx["raw_image_uint8"], fx["saved_png_uint8"]
    pipeline = RestorationPipeline.from_pretrained(
        official_weights(entry["checkpoints"], entry["salt"]), faces=False
    )
    result = pipeline(raw, RestorationOptions(preset=Preset.OFFICIAL, faces=False))
    assert_uint8_close(quantize(result.image), saved, "pipeline output")
