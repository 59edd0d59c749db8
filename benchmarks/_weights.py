"""Full-size weights for benchmarks: the released architectures with seeded random values."""

from __future__ import annotations

from pathlib import Path

import torch

from latent_restore.core.checkpoint import save_component
from latent_restore.weights import Component
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


def write_full_size_weights(directory: Path, seed: int = 0) -> Path:
    """Every global component at the released size (random values: timings and memory only)."""
    if (directory / Component.VAE_A.value / "config.json").is_file():
        return directory
    torch.manual_seed(seed)
    components = {
        Component.VAE_A: VAE(VAEConfig()),
        Component.VAE_B_QUALITY: VAE(VAEConfig()),
        Component.VAE_B_SCRATCH: VAE(VAEConfig()),
        Component.MAPPING_QUALITY: MappingNetwork(MappingConfig()),
        Component.MAPPING_SCRATCH: NonLocalMappingNetwork(NonLocalMappingConfig()),
        Component.MAPPING_HR: PatchAttentionMappingNetwork(PatchAttentionMappingConfig()),
        Component.SCRATCH_DETECTOR: ScratchDetector(ScratchDetectorConfig()),
    }
    for component, model in components.items():
        save_component(model, directory / component.value)
    return directory
