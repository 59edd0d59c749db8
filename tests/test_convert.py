"""``latent-restore convert``: identification, tolerance of old files, and clear refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import make_weights_module, manifest_path

from latent_restore.cli import main
from latent_restore.convert import ConversionError, convert_official
from latent_restore.core.checkpoint import load_component
from latent_restore.weights import Component
from stage1_vae import VAE
from stage2_mapping import ScratchDetector

SALT = 7
VAE_PATH = "Global/checkpoints/restoration/{}/latest_net_G.pth"
DETECTOR_PATH = "Global/checkpoints/detection/FT_Epoch_latest.pt"


@pytest.fixture(scope="module")
def generated():
    mw = make_weights_module()
    manifest = mw.load_manifest(manifest_path())
    return lambda ckpt_id: mw.make_state_dict(manifest, ckpt_id, SALT)


def _save(root: Path, relative: str, obj) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def test_vae_roles_come_from_folders_and_values_survive(tmp_path, generated) -> None:
    official = tmp_path / "official"
    sd_a = generated("VAE_A_quality")
    _save(official, VAE_PATH.format("VAE_A_quality"), sd_a)
    _save(official, VAE_PATH.format("VAE_B_scratch"), generated("VAE_B_scratch"))
    assert main(["convert", "--quiet", "--official", str(official), "--out", str(tmp_path / "w")]) == 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["vae_a", "vae_b_scratch"]
    vae = load_component(tmp_path / "w" / "vae_a", VAE)
    assert torch.equal(vae.encoder.stem.weight, sd_a["encoder.1.weight"])
    assert torch.equal(vae.encoder.blocks[3].conv2.bias, sd_a["encoder.13.conv_block.5.bias"])
    assert torch.equal(vae.decoder.up[1].weight, sd_a["decoder.7.weight"])
    assert torch.equal(vae.decoder.head.weight, sd_a["decoder.11.weight"])


def test_detector_without_batch_counters_and_with_module_prefix(tmp_path, generated) -> None:
    sd = {f"module.{k}": v for k, v in generated("detection_FT_Epoch_latest").items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    _save(tmp_path / "official", DETECTOR_PATH, {"model_state": sd, "epoch": torch.tensor(3)})
    written = convert_official(tmp_path / "official", tmp_path / "w")
    assert set(written) == {Component.SCRATCH_DETECTOR}
    net = load_component(written[Component.SCRATCH_DETECTOR], ScratchDetector)
    assert torch.equal(net.down[2].block.norm2.running_var, sd["module.down_path.2.block.6.running_var"])
    assert torch.equal(net.up[0].up_conv.weight, sd["module.up_path.0.up.2.weight"])


def test_truncated_file_is_refused(tmp_path, generated) -> None:
    path = _save(tmp_path / "official", VAE_PATH.format("VAE_A_quality"), generated("VAE_A_quality"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"cannot be read.*truncated"):
        convert_official(tmp_path / "official", tmp_path / "w")
    assert not (tmp_path / "w").exists()


class Payload:
    """Stands in for any non-tensor object a malicious pickle could carry."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_arbitrary_objects_is_refused(tmp_path, capsys) -> None:
    _save(tmp_path / "official", VAE_PATH.format("VAE_A_quality"), {"encoder.1.weight": Payload()})
    with pytest.raises(ConversionError, match=r"refused.*objects other than tensors"):
        convert_official(tmp_path / "official", tmp_path / "w")
    assert "must never run" not in capsys.readouterr().out


def test_unknown_variant_is_refused(tmp_path) -> None:
    _save(tmp_path / "official", VAE_PATH.format("VAE_A_quality"), {"body.0.weight": torch.zeros(3, 3)})
    with pytest.raises(ConversionError, match="unknown checkpoint variant"):
        convert_official(tmp_path / "official", tmp_path / "w")


def test_shape_mismatch_is_refused_with_the_key(tmp_path, generated, caplog) -> None:
    sd = generated("VAE_A_quality")
    sd["encoder.4.weight"] = torch.zeros(32, 64, 4, 4)
    _save(tmp_path / "official", VAE_PATH.format("VAE_A_quality"), sd)
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(ConversionError, match=r"shape mismatch for encoder\.down\.0"),
    ):
        convert_official(tmp_path / "official", tmp_path / "w")
    assert main(["convert", "--official", str(tmp_path / "official"), "--out", str(tmp_path / "w")]) == 2


def test_missing_tensor_is_refused(tmp_path, generated) -> None:
    sd = generated("VAE_A_quality")
    del sd["decoder.11.bias"]
    _save(tmp_path / "official", VAE_PATH.format("VAE_A_quality"), sd)
    with pytest.raises(ConversionError, match=r"missing keys: decoder\.head\.bias"):
        convert_official(tmp_path / "official", tmp_path / "w")


def test_vae_in_unnamed_folder_is_refused(tmp_path, generated) -> None:
    _save(tmp_path / "official", VAE_PATH.format("my_model"), generated("VAE_A_quality"))
    with pytest.raises(ConversionError, match="share keys and shapes"):
        convert_official(tmp_path / "official", tmp_path / "w")


def test_empty_tree_is_refused(tmp_path) -> None:
    (tmp_path / "official").mkdir()
    with pytest.raises(ConversionError, match="no released checkpoints"):
        convert_official(tmp_path / "official", tmp_path / "w")
