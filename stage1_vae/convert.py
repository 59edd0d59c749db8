"""Released VAE checkpoints (``latest_net_G.pth``) -> :class:`~stage1_vae.vae.VAE` (spec §3.4, §10)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from latent_restore.core.checkpoint import load_renamed
from latent_restore.core.layers import OFFICIAL_RESIDUAL_KEYS
from stage1_vae.vae import VAE, VAEConfig

OFFICIAL_VAE_CONFIG = VAEConfig()

# Official index in the encoder/decoder Sequential -> our module (pads, norms and activations have
# indices but store nothing).
OFFICIAL_VAE_MODULES = {
    "encoder.1": "encoder.stem",
    "encoder.4": "encoder.down.0",
    "encoder.7": "encoder.down.1",
    **{f"encoder.{10 + k}": f"encoder.blocks.{k}" for k in range(4)},
    **{f"decoder.{k}": f"decoder.blocks.{k}" for k in range(4)},
    "decoder.4": "decoder.up.0",
    "decoder.7": "decoder.up.1",
    "decoder.11": "decoder.head",
}


def is_official_vae(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the key layout of the released VAE generators (``encoder.*`` and ``decoder.*``)."""
    return "encoder.1.weight" in state_dict and "decoder.11.weight" in state_dict


def vae_from_official(state_dict: Mapping[str, torch.Tensor], source: str = "VAE checkpoint") -> VAE:
    """Build a :class:`VAE` with the released settings and load an official state dict strictly."""
    return load_renamed(
        VAE(OFFICIAL_VAE_CONFIG), state_dict, OFFICIAL_VAE_MODULES, source, OFFICIAL_RESIDUAL_KEYS
    )
