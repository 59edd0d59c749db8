"""Weights written by the training scripts run in the pipeline (`latent-restore run --weights`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import DATA, REPO
from PIL import Image
from test_training import data_overrides, needs_data

from latent_restore.cli import main
from latent_restore.core.training import launch
from stage1_vae.training import VAETrainingConfig
from stage1_vae.training import build_task as build_vae_task
from stage2_mapping.training import (
    MappingTrainingConfig,
    ScratchTrainingConfig,
    build_mapping_task,
    build_scratch_task,
)

TINY = REPO / "scripts" / "configs" / "tiny"
SHORT = ["train.total_steps=3", "train.decay_steps=1", "train.sample_every=0"]

pytestmark = pytest.mark.usefixtures("restore_torch_state")


def _train(config_cls, build, config: str, out: Path, *overrides: str) -> Path:
    return Path(
        launch(
            config_cls,
            build,
            config_path=str(TINY / config),
            overrides=[*SHORT, *overrides],
            out=str(out),
            quiet=True,
        )
    )


@needs_data
def test_trained_components_restore_photos(tmp_path: Path) -> None:
    vae_a = _train(
        VAETrainingConfig, build_vae_task, "vae_a.yaml", tmp_path / "vae_a", *data_overrides(real=True)
    )
    vae_b = _train(VAETrainingConfig, build_vae_task, "vae_b.yaml", tmp_path / "vae_b", *data_overrides())
    mapping_args = [*data_overrides(), f"vae_a={vae_a / 'vae_a'}", f"vae_b={vae_b / 'vae_b_quality'}"]
    quality = _train(
        MappingTrainingConfig, build_mapping_task, "mapping.yaml", tmp_path / "mq", *mapping_args
    )
    scratch = _train(
        MappingTrainingConfig,
        build_mapping_task,
        "mapping.yaml",
        tmp_path / "ms",
        *mapping_args,
        "variant=nonlocal",
        "model.nonlocal_res_blocks=1",
        "loss.ttur=false",
    )
    detector = _train(
        ScratchTrainingConfig, build_scratch_task, "scratch.yaml", tmp_path / "det", *data_overrides()
    )

    weights = tmp_path / "weights"
    for run in (vae_a, vae_b, quality, scratch, detector):
        for component in run.iterdir():
            shutil.copytree(component, weights / component.name)
    if not (weights / "vae_b_scratch").exists():
        shutil.copytree(weights / "vae_b_quality", weights / "vae_b_scratch")

    photo = DATA / "real_old_scratch" / "bopbtl_scratch_b.png"
    for flags in ([], ["--with-scratch"]):
        out = tmp_path / f"out{len(flags)}"
        args = [
            "run",
            "--quiet",
            "--input",
            str(photo),
            "--output",
            str(out),
            "--weights",
            str(weights),
            "--no-faces",
        ]
        assert main([*args, *flags]) == 0
        with Image.open(out / "bopbtl_scratch_b.png") as restored, Image.open(photo) as original:
            assert restored.size == original.size
