"""Stage 2: latent mapping networks (plain, partial non-local, patch attention) and the scratch detector."""

from stage2_mapping.mapping import (
    MappingConfig,
    MappingNetwork,
    NonLocalMappingConfig,
    NonLocalMappingNetwork,
    PatchAttentionMappingConfig,
    PatchAttentionMappingNetwork,
)
from stage2_mapping.scratch_detector import ScratchDetector, ScratchDetectorConfig

__all__ = [
    "MappingConfig",
    "MappingNetwork",
    "NonLocalMappingConfig",
    "NonLocalMappingNetwork",
    "PatchAttentionMappingConfig",
    "PatchAttentionMappingNetwork",
    "ScratchDetector",
    "ScratchDetectorConfig",
]
