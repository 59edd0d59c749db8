"""What one stage needs of another stage's network, as structural protocols.

Stage packages import only :mod:`latent_restore.core` (the dependency rule, checked by
import-linter), so the mapping stage cannot name stage 1's VAE class; it loads VAE components by
their registered architecture and checks them against :class:`LatentAutoencoder` instead.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LatentAutoencoder(Protocol):
    """A network with an image -> latent encoder and a latent -> image decoder (stage 1's VAEs).

    Its ``config`` (not part of the check: protocols with data members allow no class checks)
    gives ``latent_channels`` and ``multiple``, the factor by which the latent is smaller.
    """

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...
