"""Released face generators (``Face_Enhancement/checkpoints/*/latest_net_G.pth``) -> :class:`FaceGenerator`.

Spec §6 and §10. The released files store the residual convolutions with spectral normalisation
(``weight_orig`` plus the power-iteration vectors ``weight_u``/``weight_v``). In eval mode PyTorch
uses ``weight_orig / sigma`` with ``sigma = u^T W v`` from the stored vectors and no further
iteration, so folding that once gives plain weights with identical outputs.

``Setting_9_epoch_100`` (run at 256) and ``FaceSR_512`` (run at 512) share keys and shapes; the
size they are run at is not stored in the file, so the caller passes ``load_size`` (the converter
of the weights directory takes it from the checkpoint's folder name).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from face_enhance.generator import FaceGenerator, FaceGeneratorConfig
from latent_restore.core.checkpoint import CheckpointError, load_renamed

logger = logging.getLogger(__name__)

OFFICIAL_FACE_MODULES = {
    "fc": "stem",
    "head_0": "head",
    "G_middle_0": "middle.0",
    "G_middle_1": "middle.1",
    **{f"up_{i}": f"up.{i}" for i in range(4)},
    "conv_img": "to_rgb",
}
"""Official top-level modules -> ours."""

OFFICIAL_FACE_INNER = {
    "conv_0": "conv1",
    "conv_1": "conv2",
    "conv_s": "shortcut_conv",
    "norm_0": "norm1",
    "norm_1": "norm2",
    "norm_s": "shortcut_norm",
    "param_free_norm": "norm",
    "mlp_shared.0": "shared",
    "mlp_gamma": "gamma",
    "mlp_beta": "beta",
}
"""Names inside a SPADE residual block (applied in this order below each top-level module)."""

_ORIG, _U, _V = "weight_orig", "weight_u", "weight_v"


def is_official_face_generator(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the key layout of the released SPADE face generators."""
    return "fc.weight" in state_dict and "head_0.conv_0.weight_orig" in state_dict


def _sigma(prefix: str, state_dict: Mapping[str, torch.Tensor], source: str) -> torch.Tensor:
    weight = state_dict[prefix + _ORIG]
    if prefix + _U not in state_dict:
        raise CheckpointError(f"{source}: {prefix}{_ORIG} has no {prefix}{_U}; cannot undo spectral norm")
    u = state_dict[prefix + _U]
    matrix = weight.reshape(weight.shape[0], -1)
    if prefix + _V in state_dict:
        # Exactly the eval-mode computation of torch's spectral norm (float32, stored vectors).
        return torch.dot(u, torch.mv(matrix, state_dict[prefix + _V]))
    if prefix + "weight" in state_dict:
        # Files written before PyTorch 1.0 keep the normalised weight instead of v. PyTorch then
        # solves for a v and rescales it so that u^T W v equals mean(weight_orig / weight); only
        # that value enters the effective weight, so it is used directly. Zero entries (0 / 0)
        # are left out of the mean instead of turning it into NaN.
        normalised = state_dict[prefix + "weight"]
        nonzero = normalised != 0
        return (weight[nonzero] / normalised[nonzero]).mean()
    raise CheckpointError(f"{source}: {prefix}{_ORIG} has neither {prefix}{_V} nor {prefix}weight")


def fold_spectral_norm(
    state_dict: Mapping[str, torch.Tensor], source: str = "face generator"
) -> dict[str, torch.Tensor]:
    """Replace every ``<p>weight_orig/_u/_v`` triple by the effective ``<p>weight = weight_orig / sigma``.

    Args:
        state_dict: official state dict (other keys pass through unchanged).
        source: name used in error messages.

    Returns:
        A new state dict without spectral-norm entries.
    """
    prefixes = [key[: -len(_ORIG)] for key in state_dict if key.endswith(_ORIG)]
    folded = {
        prefix + "weight": state_dict[prefix + _ORIG] / _sigma(prefix, state_dict, source)
        for prefix in prefixes
    }
    spent = {prefix + suffix for prefix in prefixes for suffix in (_ORIG, _U, _V, "weight")}
    out = {key: value for key, value in state_dict.items() if key not in spent}
    out.update(folded)
    logger.debug("%s: folded spectral norm of %d convolutions", source, len(prefixes))
    return out


def official_face_config(state_dict: Mapping[str, torch.Tensor], load_size: int) -> FaceGeneratorConfig:
    """The released layout with channel counts read from the tensor shapes.

    ``load_size`` is not stored in the file. Anything the shapes do not fit is reported by the
    strict load that follows.
    """
    try:
        stem = state_dict["fc.weight"]
        hidden = state_dict["head_0.norm_0.mlp_shared.0.weight"].shape[0]
        out_channels = state_dict["conv_img.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not a released face generator: {exc.args[0]} is missing") from None
    layout = FaceGeneratorConfig()
    return FaceGeneratorConfig(
        load_size=load_size,
        in_channels=stem.shape[1],
        out_channels=out_channels,
        base_channels=stem.shape[0] // 2 ** (layout.num_upsamples - 1),
        spade_hidden_channels=hidden,
        num_upsamples=layout.num_upsamples,
    )


def face_generator_from_official(
    state_dict: Mapping[str, torch.Tensor], source: str = "face generator", load_size: int = 256
) -> FaceGenerator:
    """Fold spectral norm, rename by table and load strictly (missing ``num_batches_tracked`` is fine).

    Args:
        state_dict: a released face generator state dict.
        source: name used in messages (the file path).
        load_size: 256 for ``Setting_9_epoch_100``, 512 for ``FaceSR_512``.

    Returns:
        The generator in eval mode.
    """
    model = FaceGenerator(official_face_config(state_dict, load_size))
    plain = fold_spectral_norm(state_dict, source)
    return load_renamed(model, plain, OFFICIAL_FACE_MODULES, source, OFFICIAL_FACE_INNER)
