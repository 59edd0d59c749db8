"""Our checkpoint format and typed configs: strict, loud loading."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from latent_restore.core.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_component,
    rename_keys,
    save_component,
)
from latent_restore.core.config import ConfigError, config_from_dict, config_to_dict
from stage1_vae import VAE, VAEConfig
from stage2_mapping import MappingNetwork, PatchAttentionMappingConfig

TINY = VAEConfig(base_channels=4, latent_channels=8, num_res_blocks=1)


def test_component_directory_layout(tmp_path) -> None:
    save_component(VAE(TINY), tmp_path / "vae", extra={"note": "test"})
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    meta = json.loads((tmp_path / "vae" / CONFIG_NAME).read_text())
    assert meta["architecture"] == "vae"
    assert meta["config"]["latent_channels"] == 8
    assert meta["extra"] == {"note": "test"}


def test_mismatched_weights_are_reported_then_refused(tmp_path) -> None:
    save_component(VAE(TINY), tmp_path / "vae")
    meta = json.loads((tmp_path / "vae" / CONFIG_NAME).read_text())
    meta["config"]["latent_channels"] = 16
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"shape mismatch for encoder\.blocks\.0\.conv1\.weight"):
        load_component(tmp_path / "vae")


def test_missing_and_unexpected_keys_are_listed(tmp_path) -> None:
    save_component(VAE(TINY), tmp_path / "vae")
    meta = json.loads((tmp_path / "vae" / CONFIG_NAME).read_text())
    meta["config"]["num_res_blocks"] = 2
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.blocks\.1\.conv1\.weight"):
        load_component(tmp_path / "vae")


def test_wrong_class_unknown_architecture_and_corrupt_files(tmp_path) -> None:
    save_component(VAE(TINY), tmp_path / "vae")
    with pytest.raises(CheckpointError, match="expected a MappingNetwork"):
        load_component(tmp_path / "vae", MappingNetwork)
    meta = json.loads((tmp_path / "vae" / CONFIG_NAME).read_text())
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps({**meta, "architecture": "nope"}))
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_component(tmp_path / "vae")
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps({**meta, "config": {"bogus": 1}}))
    with pytest.raises(CheckpointError, match="unknown keys"):
        load_component(tmp_path / "vae")
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps(meta))
    weights = tmp_path / "vae" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_component(tmp_path / "vae")
    with pytest.raises(CheckpointError, match="not found"):
        load_component(tmp_path / "nothing")


def test_config_round_trip_with_tuples() -> None:
    config = PatchAttentionMappingConfig(patch_sizes=(4, 2), pre_blocks=1)
    plain = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(PatchAttentionMappingConfig, plain) == config


def test_config_rejects_wrong_types() -> None:
    @dataclass
    class Small:
        size: int = 1
        rate: float = 0.5

    assert config_from_dict(Small, {"rate": 1}).rate == 1.0
    with pytest.raises(ConfigError, match="expected int"):
        config_from_dict(Small, {"size": "big"})
    with pytest.raises(ConfigError, match="expected int"):
        config_from_dict(Small, {"size": True})


def test_rename_keys_longest_prefix_and_inner() -> None:
    sd = {
        "NL.W.weight": torch.zeros(1),
        "NL.theta.bias": torch.zeros(1),
        "NL.res_block.0.conv_block.5.bias": torch.zeros(1),
    }
    out = rename_keys(
        sd,
        {"NL": "block", "NL.W": "block.project", "NL.res_block": "block.blocks"},
        {"conv_block.5": "conv2"},
    )
    assert sorted(out) == ["block.blocks.0.conv2.bias", "block.project.weight", "block.theta.bias"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_component_and_tensor(tmp_path, bad) -> None:
    model = VAE(TINY)
    with torch.no_grad():
        model.decoder.head.weight[0, 0, 0, 0] = bad
    save_component(model, tmp_path / "vae_a")
    with pytest.raises(CheckpointError, match=r"component vae_a .*NaN or Inf.*decoder\.head\.weight"):
        load_component(tmp_path / "vae_a")


def test_tampered_config_is_refused_before_the_network_is_allocated(tmp_path, monkeypatch) -> None:
    """A channel count raised in config.json alone is caught from the safetensors header.

    At 2**20 latent channels the real network would need terabytes; the check builds it on the
    ``meta`` device only, so any real construction here is a failure.
    """
    save_component(VAE(TINY), tmp_path / "vae")
    meta = json.loads((tmp_path / "vae" / CONFIG_NAME).read_text())
    meta["config"]["latent_channels"] = 1 << 20
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps(meta))
    built_on: list[str] = []
    original = VAE.__init__

    def spy(self, config):
        built_on.append(str(torch.empty(0).device))
        if built_on[-1] != "meta":
            raise AssertionError("the tampered network was allocated for real")
        original(self, config)

    monkeypatch.setattr(VAE, "__init__", spy)
    with pytest.raises(CheckpointError, match=r"(?s)checked before allocating.*shape mismatch"):
        load_component(tmp_path / "vae")
    assert built_on == ["meta"]
