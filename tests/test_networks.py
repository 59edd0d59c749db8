"""Tiny-config tests of every registered network: shapes, gradients, save/load round trip.

One case per architecture name in the checkpoint registry; a network registered without a case
here fails :func:`test_every_registered_architecture_has_a_case`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from face_enhance.generator import FaceGenerator, FaceGeneratorConfig
from latent_restore.colorize.network import Colorizer, ColorizerConfig
from latent_restore.core.checkpoint import (
    ARCHITECTURES,
    CheckpointError,
    architecture_class,
    load_component,
    register_architecture,
    save_component,
)
from latent_restore.core.imaging import HR_MASK_DILATION, HoleFill
from latent_restore.core.unet import UNetConfig
from latent_restore.pix2pix import Pix2PixGenerator
from stage1_vae import VAE, VAEConfig
from stage2_mapping import (
    MappingConfig,
    MappingNetwork,
    NonLocalMappingConfig,
    NonLocalMappingNetwork,
    PatchAttentionMappingConfig,
    PatchAttentionMappingNetwork,
    ScratchDetector,
    ScratchDetectorConfig,
)
from stage2_mapping.hole_fusion import HoleFusion
from stage2_mapping.mapping import GlobalContext
from stage2_mapping.training import warm_start

TINY_MAPPING = {
    "latent_channels": 8,
    "base_channels": 4,
    "max_channels": 16,
    "num_levels": 3,
    "num_blocks": 1,
}


def _scratch_mask(n: int, h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(n, 1, h, w)
    mask[:, :, h // 4 : h // 2, :] = 1.0
    mask[:, :, :, w - 5 : w - 2] = 1.0
    return mask


def _cases():
    torch.manual_seed(0)
    return {
        "vae": (
            VAE(VAEConfig(base_channels=4, latent_channels=8, num_res_blocks=1)),
            lambda: (torch.rand(2, 3, 32, 24) * 2 - 1,),
            (2, 3, 32, 24),
        ),
        "mapping": (
            MappingNetwork(MappingConfig(**TINY_MAPPING)),
            lambda: (torch.randn(2, 8, 8, 6),),
            (2, 8, 8, 6),
        ),
        "mapping_nonlocal": (
            NonLocalMappingNetwork(NonLocalMappingConfig(**TINY_MAPPING, nonlocal_res_blocks=1)),
            lambda: (torch.randn(2, 8, 8, 6), _scratch_mask(2, 32, 24)),
            (2, 8, 8, 6),
        ),
        "mapping_patch_attention": (
            PatchAttentionMappingNetwork(
                PatchAttentionMappingConfig(
                    **TINY_MAPPING, patch_sizes=(4, 2), pre_blocks=1, inter_blocks=1, post_blocks=1
                )
            ),
            lambda: (torch.randn(2, 8, 8, 8), _scratch_mask(2, 32, 32)),
            (2, 8, 8, 8),
        ),
        "scratch_detector": (
            ScratchDetector(ScratchDetectorConfig(base_channels=4, depth=2)),
            lambda: (torch.rand(2, 1, 16, 24) * 2 - 1,),
            (2, 1, 16, 24),
        ),
        "pix2pix_generator": (
            Pix2PixGenerator(UNetConfig(base_channels=4, max_channels=16, depth=3)),
            lambda: (torch.rand(2, 3, 16, 24) * 2 - 1,),
            (2, 3, 16, 24),
        ),
        "colorizer": (
            Colorizer(ColorizerConfig(base_channels=4, max_channels=16, depth=3)),
            lambda: (torch.rand(2, 1, 16, 24) * 2 - 1,),
            (2, 2, 16, 24),
        ),
        "face_generator": (
            FaceGenerator(
                FaceGeneratorConfig(load_size=64, base_channels=4, spade_hidden_channels=4, num_upsamples=3)
            ),
            lambda: (torch.rand(2, 3, 64, 64) * 2 - 1,),
            (2, 3, 64, 64),
        ),
    }


def test_every_registered_architecture_has_a_case() -> None:
    assert set(_cases()) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_resolves_to_its_class(name: str) -> None:
    """The registry's "module:Class" strings import the class that declares that name."""
    cls = architecture_class(name)
    assert cls.architecture == name
    assert f"{cls.__module__}:{cls.__qualname__}" == ARCHITECTURES[name]


def test_an_unlisted_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="add or correct the entry"):

        @register_architecture("not_listed", UNetConfig)
        class Unlisted(torch.nn.Module):
            pass


@pytest.mark.parametrize("name", list(_cases()))
def test_forward_shape_and_gradients(name: str) -> None:
    model, inputs, shape = _cases()[name]
    model.train()
    out = model(*inputs())
    assert out.shape == shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", list(_cases()))
def test_save_load_round_trip(name: str, tmp_path) -> None:
    model, inputs, _ = _cases()[name]
    model.eval()
    args = inputs()
    save_component(model, tmp_path / name)
    loaded = load_component(tmp_path / name)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args), model(*args), rtol=0, atol=0)


def test_vae_keeps_size_for_multiples_and_shrinks_otherwise() -> None:
    vae = VAE(VAEConfig(base_channels=4, latent_channels=8, num_res_blocks=1)).eval()
    assert vae.config.multiple == 4
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 36, 44))
        assert z.shape == (1, 8, 9, 11)
        assert vae(torch.zeros(1, 3, 90, 40)).shape == (1, 3, 88, 40)


def test_vae_output_is_bounded() -> None:
    vae = VAE(VAEConfig(base_channels=4, latent_channels=8, num_res_blocks=1)).eval()
    with torch.no_grad():
        out = vae(torch.randn(1, 3, 16, 16) * 10)
    assert out.abs().max() <= 1.0


def test_scratch_detector_rejects_sides_not_multiple() -> None:
    net = ScratchDetector(ScratchDetectorConfig(base_channels=4, depth=2)).eval()
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 1, 18, 16))


def test_scratch_detector_blur_filters_are_binomial() -> None:
    net = ScratchDetector(ScratchDetectorConfig(base_channels=4, depth=2))
    filt = net.down[0].blur.filt
    assert filt.shape == (4, 1, 3, 3)
    torch.testing.assert_close(filt[0, 0], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)


@pytest.mark.parametrize(
    "network_cls", [MappingNetwork, NonLocalMappingNetwork, PatchAttentionMappingNetwork]
)
def test_global_context_starts_as_the_mapping_without_it(network_cls: type, tmp_path) -> None:
    """Warm-started from a mapping without the branch, the output is unchanged; the flag round-trips."""
    config_cls = {
        MappingNetwork: MappingConfig,
        NonLocalMappingNetwork: NonLocalMappingConfig,
        PatchAttentionMappingNetwork: PatchAttentionMappingConfig,
    }[network_cls]
    extra = (
        {"patch_sizes": (2,), "pre_blocks": 1, "post_blocks": 1}
        if config_cls is PatchAttentionMappingConfig
        else {}
    )
    config = config_cls(**{**TINY_MAPPING, "num_levels": 1}, **extra)
    torch.manual_seed(0)
    plain = network_cls(config).eval()
    with_context = network_cls(dataclasses.replace(config, global_context=True)).eval()
    assert warm_start(with_context, plain) == list(plain.state_dict())
    z, mask = torch.randn(1, 8, 12, 10), _scratch_mask(1, 48, 40)
    with torch.no_grad():
        assert with_context(z, mask).equal(plain(z, mask))
        torch.nn.init.normal_(with_context.context.film.weight, std=0.1)  # as training moves it off zero
        assert not torch.allclose(with_context(z, mask), plain(z, mask))
    save_component(with_context, tmp_path / "mapping")
    loaded = load_component(tmp_path / "mapping").eval()
    assert loaded.config.global_context
    with torch.no_grad():
        assert loaded(z, mask).equal(with_context(z, mask))


def test_global_context_modulates_by_the_statistics_of_the_whole_map() -> None:
    """Each channel's scale and shift come from its mean and deviation: where a value sits is ignored."""
    torch.manual_seed(1)
    context = GlobalContext(6)
    torch.nn.init.normal_(context.film.weight, std=0.5)
    x = torch.randn(2, 6, 9, 7)
    with torch.no_grad():
        out = context(x)
        assert context(x.flip(-1, -2)).equal(out.flip(-1, -2))  # a permutation keeps the statistics
        brighter = x.clone()
        brighter[:, :, -1, -1] += 10.0  # one far cell changes every channel's mean and deviation
        changed = context(brighter)[:, :, 0, 0] - out[:, :, 0, 0]
        assert changed.abs().min() > 0


_REMOVE = object()


def _rewrite_stored_config(path: Path, key: str, value: object = _REMOVE) -> None:
    """Set (or, without ``value``, remove) one key of a saved component's network config."""
    config_file = path / "config.json"
    stored = json.loads(config_file.read_text())
    if value is _REMOVE:
        del stored["config"][key]
    else:
        stored["config"][key] = value
    config_file.write_text(json.dumps(stored))


def test_nonlocal_blend_travels_with_the_weights(tmp_path) -> None:
    """A blending block's fusion and gate are read back; a config without the key (released
    networks, earlier built-in ones) is the released replacing block, and a typo is refused."""
    model = NonLocalMappingNetwork(
        NonLocalMappingConfig(**TINY_MAPPING, nonlocal_res_blocks=1, hole_fusion="blend")
    )
    with torch.no_grad():
        model.nonlocal_block.blend.fill_(0.3)
    path = save_component(model, tmp_path / "blend")
    loaded = load_component(path)
    assert loaded.config.hole_fusion is HoleFusion.BLEND
    assert torch.equal(loaded.nonlocal_block.blend, model.nonlocal_block.blend)
    replace = save_component(
        NonLocalMappingNetwork(NonLocalMappingConfig(**TINY_MAPPING, nonlocal_res_blocks=1)),
        tmp_path / "replace",
    )
    _rewrite_stored_config(replace, "hole_fusion")
    assert load_component(replace).config.hole_fusion is HoleFusion.REPLACE
    _rewrite_stored_config(replace, "hole_fusion", "mix")
    with pytest.raises(CheckpointError, match="'mix' is not one of 'replace', 'blend'"):
        load_component(replace)


@pytest.mark.parametrize("variant", ["nonlocal", "patch_attention"])
def test_hole_fill_travels_with_the_weights(variant: str, tmp_path) -> None:
    """How a mapping's holes were filled in training is read back from its config; a config
    without the key (released networks, earlier built-in ones) means the released white."""
    if variant == "nonlocal":
        model = NonLocalMappingNetwork(
            NonLocalMappingConfig(**TINY_MAPPING, nonlocal_res_blocks=1, hole_fill=HoleFill.INPAINT)
        )
    else:
        model = PatchAttentionMappingNetwork(
            PatchAttentionMappingConfig(**TINY_MAPPING, patch_sizes=(2,), hole_fill="inpaint")
        )
    assert model.config.hole_fill is HoleFill.INPAINT
    path = save_component(model, tmp_path / variant)
    assert load_component(path).config.hole_fill is HoleFill.INPAINT
    _rewrite_stored_config(path, "hole_fill")
    assert load_component(path).config.hole_fill is HoleFill.WHITE
    _rewrite_stored_config(path, "hole_fill", "black")
    with pytest.raises(CheckpointError, match="'black' is not one of 'white', 'inpaint'"):
        load_component(path)


@pytest.mark.parametrize(("variant", "released"), [("nonlocal", 0), ("patch_attention", HR_MASK_DILATION)])
def test_hole_dilation_travels_with_the_weights(variant: str, released: int, tmp_path) -> None:
    """How far a mapping's training widened the holes is read back; without the key, the released
    pre-processing of its variant (HR mode's 7x7 dilation for patch attention, none otherwise)."""
    config_cls, network_cls, extra = {
        "nonlocal": (NonLocalMappingConfig, NonLocalMappingNetwork, {"nonlocal_res_blocks": 1}),
        "patch_attention": (PatchAttentionMappingConfig, PatchAttentionMappingNetwork, {"patch_sizes": (2,)}),
    }[variant]
    assert config_cls(**TINY_MAPPING, **extra).hole_dilation == released
    path = save_component(
        network_cls(config_cls(**TINY_MAPPING, **extra, hole_dilation=2)), tmp_path / variant
    )
    assert load_component(path).config.hole_dilation == 2
    _rewrite_stored_config(path, "hole_dilation")
    assert load_component(path).config.hole_dilation == released
    _rewrite_stored_config(path, "hole_dilation", -1)
    with pytest.raises(CheckpointError, match="hole_dilation"):
        load_component(path)
