"""``latent-restore convert``: identification, tolerance of old files, release zips, and clear refusals."""

from __future__ import annotations

import json
import logging
import stat
import struct
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import torch
from helpers import make_weights_module, manifest_path

from latent_restore.cli import main
from latent_restore.convert import (
    STAGING_PREFIX,
    ConversionError,
    ReleaseKind,
    convert_official,
    release_kind,
)
from latent_restore.core.checkpoint import load_component
from latent_restore.weights import Component
from stage1_vae import VAE
from stage2_mapping import ScratchDetector

SALT = 7
VAE_PATH = "Global/checkpoints/restoration/{}/latest_net_G.pth"
DETECTOR_PATH = "Global/checkpoints/detection/FT_Epoch_latest.pt"


@pytest.fixture(scope="module")
def generated():
    try:
        mw = make_weights_module()
        manifest = mw.load_manifest(manifest_path())
    except FileNotFoundError as exc:
        pytest.skip(f"the checkpoint manifest and weight rule of ../shared/spec are missing: {exc}")
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def make(ckpt_id: str) -> dict[str, torch.Tensor]:
        if ckpt_id not in cache:
            cache[ckpt_id] = mw.make_state_dict(manifest, ckpt_id, SALT)
        return {k: v.clone() for k, v in cache[ckpt_id].items()}

    return make


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
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["source.json", "vae_a", "vae_b_scratch"]
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


# --- release zips ---------------------------------------------------------------------------------

ZIP_VAE = "checkpoints/restoration/{}/latest_net_G.pth"
ZIP_DETECTOR = "checkpoints/detection/FT_Epoch_latest.pt"


def _zip_tree(root: Path, archive: Path) -> Path:
    """Zip ``root``'s files with names relative to it, as the release archives are laid out."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    return archive


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f"{STAGING_PREFIX}*"))


def _tensors(weights: Path) -> dict[str, bytes]:
    return {str(p.relative_to(weights)): p.read_bytes() for p in sorted(weights.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "relative,kind",
    [
        ("checkpoints/restoration/VAE_A_quality/latest_net_G.pth", ReleaseKind.GLOBAL),
        ("Global/checkpoints/detection/FT_Epoch_latest.pt", ReleaseKind.GLOBAL),
        ("checkpoints/Setting_9_epoch_100/latest_net_G.pth", ReleaseKind.FACE),
        ("Face_Enhancement/checkpoints/FaceSR_512/latest_net_G.pth", ReleaseKind.FACE),
        ("Face_Enhancement/checkpoints/restoration/x/latest_net_G.pth", None),
        ("Global/checkpoints/FaceSR_512/latest_net_G.pth", None),
        ("__MACOSX/checkpoints/restoration/VAE_A_quality/._latest_net_G.pth", None),
        ("checkpoints/restoration/VAE_A_quality/._latest_net_G.pth", None),
        ("checkpoints/restoration/VAE_A_quality/opt.txt", None),
    ],
)
def test_release_is_told_by_where_a_member_sits(relative, kind) -> None:
    assert release_kind(PurePosixPath(relative)) is kind


def test_release_zip_converts_like_its_unzipped_tree(tmp_path, generated) -> None:
    tree = tmp_path / "Global"
    _save(tree, ZIP_VAE.format("VAE_A_quality"), generated("VAE_A_quality"))
    _save(tree, ZIP_VAE.format("VAE_B_scratch"), generated("VAE_B_scratch"))
    _save(tree, ZIP_DETECTOR, {"model_state": generated("detection_FT_Epoch_latest")})
    archive = _zip_tree(tree, tmp_path / "any_name.zip")
    assert main(["convert", "--quiet", "--official", str(archive), "--out", str(tmp_path / "from_zip")]) == 0
    assert main(["convert", "--quiet", "--official", str(tree), "--out", str(tmp_path / "from_tree")]) == 0
    from_zip, from_tree = _tensors(tmp_path / "from_zip"), _tensors(tmp_path / "from_tree")
    assert sorted(from_zip) == sorted(from_tree)
    assert {k for k in from_zip if k.endswith(".safetensors")} == {
        f"{c}/model.safetensors" for c in ("vae_a", "vae_b_scratch", "scratch_detector")
    }
    for name in from_zip:
        if name != "source.json":
            assert from_zip[name] == from_tree[name], name
    source = json.loads(from_zip["source.json"])
    assert source["sources"][0]["type"] == "archive"
    assert source["sources"][0]["release"] == ["global"]
    assert len(source["sources"][0]["sha256"]) == 64
    assert source["components"]["vae_a"]["from"] == ZIP_VAE.format("VAE_A_quality")


def _small_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _symlink_member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _declare_sizes(archive: Path, size: int) -> Path:
    """Rewrite every central-directory entry's uncompressed size (what a zip bomb declares)."""
    data = bytearray(archive.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        struct.pack_into("<I", data, start + 24, size)
        start = data.find(b"PK\x01\x02", start + 4)
    archive.write_bytes(bytes(data))
    return archive


@pytest.mark.parametrize(
    "members,message",
    [
        ([("../checkpoints/restoration/VAE_A_quality/latest_net_G.pth", b"x")], r"outside the archive"),
        ([("checkpoints/../../etc/latest_net_G.pth", b"x")], r"outside the archive"),
        ([("/checkpoints/restoration/VAE_A_quality/latest_net_G.pth", b"x")], r"absolute path"),
        ([(_symlink_member(ZIP_VAE.format("VAE_A_quality")), b"/etc/passwd")], r"symbolic link"),
    ],
    ids=["dotdot", "dotdot-inside", "absolute", "symlink"],
)
def test_unsafe_archive_members_are_refused(tmp_path, members, message) -> None:
    archive = _small_zip(tmp_path / "global_checkpoints.zip", members)
    with pytest.raises(ConversionError, match=rf"refused: member .*{message}"):
        convert_official(archive, tmp_path / "w")
    _assert_nothing_written(tmp_path / "w")
    assert not (tmp_path / "etc").exists()


def test_declared_uncompressed_size_above_the_bound_is_refused(tmp_path) -> None:
    archive = _small_zip(
        tmp_path / "global_checkpoints.zip",
        [(ZIP_VAE.format("VAE_A_quality"), b"a" * 100), (ZIP_DETECTOR, b"b" * 100)],
    )
    _declare_sizes(archive, 3 << 30)
    with pytest.raises(ConversionError, match=r"declare more than \d+ uncompressed bytes"):
        convert_official(archive, tmp_path / "w")
    _assert_nothing_written(tmp_path / "w")


def test_member_larger_than_it_declares_is_not_read_beyond(tmp_path, generated) -> None:
    buffer = tmp_path / "vae.pth"
    torch.save(generated("VAE_A_quality"), buffer)
    archive = _small_zip(
        tmp_path / "global_checkpoints.zip", [(ZIP_VAE.format("VAE_A_quality"), buffer.read_bytes())]
    )
    _declare_sizes(archive, 1000)
    with pytest.raises(ConversionError, match=r"cannot be (read from the archive|read as a PyTorch)"):
        convert_official(archive, tmp_path / "w")
    _assert_nothing_written(tmp_path / "w")


def test_per_archive_bound_applies_to_bytes_actually_read(tmp_path, generated) -> None:
    tree = tmp_path / "tree"
    _save(tree, ZIP_VAE.format("VAE_A_quality"), generated("VAE_A_quality"))
    archive = _zip_tree(tree, tmp_path / "global_checkpoints.zip")
    size = zipfile.ZipFile(archive).infolist()[0].file_size
    with pytest.raises(ConversionError, match="uncompressed bytes"):
        convert_official(archive, tmp_path / "w", max_archive_bytes=size - 1)
    assert convert_official(archive, tmp_path / "w", max_archive_bytes=size)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_component_and_tensor(tmp_path, generated, bad) -> None:
    sd = generated("VAE_A_quality")
    sd["encoder.4.weight"][0, 0, 0, 0] = bad
    _save(tmp_path / "official", VAE_PATH.format("VAE_A_quality"), sd)
    _save(tmp_path / "official", DETECTOR_PATH, {"model_state": generated("detection_FT_Epoch_latest")})
    with pytest.raises(ConversionError, match=r"-> vae_a\): non-finite values .* tensor encoder\.4\.weight"):
        convert_official(tmp_path / "official", tmp_path / "w")
    _assert_nothing_written(tmp_path / "w")


def test_text_files_and_symlinks_to_them_are_refused_without_traceback(tmp_path, caplog) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    tree = tmp_path / "official"
    (tree / "Global/checkpoints/restoration/VAE_A_quality").mkdir(parents=True)
    text_file = tree / VAE_PATH.format("VAE_A_quality")
    text_file.write_text("hello\n")
    with pytest.raises(ConversionError, match=r"not a PyTorch checkpoint \(it starts with b'hello"):
        convert_official(tree, tmp_path / "w")
    text_file.unlink()
    text_file.symlink_to(notes)
    with pytest.raises(ConversionError, match=r"not a PyTorch checkpoint \(it starts with b'not a"):
        convert_official(tree, tmp_path / "w")
    text_file.unlink()
    text_file.symlink_to(tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match=r"broken symbolic link"):
        convert_official(tree, tmp_path / "w")
    link = tmp_path / "release.zip"
    link.symlink_to(notes)
    single = tmp_path / "latest_net_G.pth"
    torch.save({"encoder.1.weight": torch.zeros(1)}, single)
    for path, message in (
        (notes, "neither a folder nor a readable zip"),
        (link, "neither a folder nor"),
        (single, "a single PyTorch checkpoint, not a release archive"),
    ):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(["convert", "--official", str(path), "--out", str(tmp_path / "w")]) == 2
        assert message in caplog.text
    _assert_nothing_written(tmp_path / "w")


def test_stale_components_are_never_mixed_with_new_ones(tmp_path, generated, caplog) -> None:
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "w"
    _save(first, VAE_PATH.format("VAE_A_quality"), generated("VAE_A_quality"))
    _save(first, VAE_PATH.format("VAE_B_scratch"), generated("VAE_B_scratch"))
    _save(second, DETECTOR_PATH, {"model_state": generated("detection_FT_Epoch_latest")})
    assert main(["convert", "--quiet", "--official", str(first), "--out", str(out)]) == 0
    before = _tensors(out)
    with caplog.at_level(logging.ERROR):
        assert main(["convert", "--official", str(second), "--out", str(out)]) == 2
    assert "already holds a weights set" in caplog.text
    assert _tensors(out) == before
    assert main(["convert", "--quiet", "--official", str(second), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scratch_detector", "source.json"]
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))
    (out / "my_notes.txt").write_text("keep me")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["convert", "--official", str(first), "--out", str(out), "--overwrite"]) == 2
    assert "not part of a weights set" in caplog.text
    assert (out / "my_notes.txt").read_text() == "keep me"


def test_zip_and_tree_together_and_a_duplicate_component_is_refused(tmp_path, generated) -> None:
    tree = tmp_path / "tree"
    _save(tree, ZIP_VAE.format("VAE_A_quality"), generated("VAE_A_quality"))
    archive = _zip_tree(tree, tmp_path / "global_checkpoints.zip")
    other = tmp_path / "other"
    _save(other, DETECTOR_PATH, {"model_state": generated("detection_FT_Epoch_latest")})
    written = convert_official([archive, other], tmp_path / "w")
    assert set(written) == {Component.VAE_A, Component.SCRATCH_DETECTOR}
    with pytest.raises(ConversionError, match="are both a vae_a"):
        convert_official([archive, tree], tmp_path / "w2")
    _assert_nothing_written(tmp_path / "w2")
