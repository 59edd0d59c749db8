"""Released mapping and detection checkpoints -> our networks (spec §3.5–3.7, §4, §10).

Rename tables from the official ``Sequential`` indices to our named modules; each variant is
recognised by keys that only it has.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from latent_restore.core.checkpoint import load_renamed
from latent_restore.core.layers import OFFICIAL_RESIDUAL_KEYS
from stage2_mapping.mapping import (
    MappingConfig,
    MappingNetwork,
    NonLocalMappingConfig,
    NonLocalMappingNetwork,
    PatchAttentionMappingConfig,
    PatchAttentionMappingNetwork,
)
from stage2_mapping.scratch_detector import ScratchDetector, ScratchDetectorConfig

_WIDEN = (0, 3, 6, 9)  # official indices of the four widening convs (each followed by IN, ReLU)

OFFICIAL_MAPPING_MODULES = {
    **{f"model.{i}": f"expand.{k}" for k, i in enumerate(_WIDEN)},
    **{f"model.{12 + k}": f"blocks.{k}" for k in range(6)},
    **{f"model.{i}": f"contract.{k}" for k, i in enumerate((18, 21, 24))},
    "model.27": "out",
}

OFFICIAL_NONLOCAL_MAPPING_MODULES = {
    **{f"before_NL.{i}": f"expand.{k}" for k, i in enumerate(_WIDEN)},
    "NL": "nonlocal_block",
    "NL.W": "nonlocal_block.project",
    "NL.res_block": "nonlocal_block.blocks",
    **{f"after_NL.{k}": f"blocks.{k}" for k in range(6)},
    **{f"after_NL.{i}": f"contract.{k}" for k, i in enumerate((6, 9, 12))},
    "after_NL.15": "out",
}

OFFICIAL_PATCH_ATTENTION_MAPPING_MODULES = {
    **{f"before_NL.{i}": f"expand.{k}" for k, i in enumerate(_WIDEN)},
    "before_NL.12": "pre_blocks.0",
    "before_NL.13": "pre_blocks.1",
    **{f"NL_scale_{s}.res_block.0": f"attention.{s - 1}.block" for s in (1, 2, 3)},
    **{f"NL_scale_{s}.F_Combine": f"attention.{s - 1}.combine" for s in (1, 2, 3)},
    **{f"res_block_{s}": f"inter_blocks.{s - 1}" for s in (1, 2)},
    "after_NL.0": "post_blocks.0",
    "after_NL.1": "post_blocks.1",
    **{f"after_NL.{i}": f"contract.{k}" for k, i in enumerate((2, 5, 8))},
    "after_NL.11": "out",
}

_CONV_BLOCK = {"1": "conv1", "2": "norm1", "5": "conv2", "6": "norm2"}
OFFICIAL_DETECTOR_MODULES = {
    "first.1": "stem",
    **{f"down_sample.{i}.1": f"down.{i}.reduce_conv" for i in range(4)},
    **{f"down_sample.{i}.2": f"down.{i}.reduce_norm" for i in range(4)},
    **{f"down_sample.{i}.4": f"down.{i}.blur" for i in range(4)},
    **{f"down_path.{i}.block.{o}": f"down.{i}.block.{n}" for i in range(4) for o, n in _CONV_BLOCK.items()},
    **{f"up_path.{j}.up.2": f"up.{j}.up_conv" for j in range(4)},
    **{
        f"up_path.{j}.conv_block.block.{o}": f"up.{j}.block.{n}"
        for j in range(4)
        for o, n in _CONV_BLOCK.items()
    },
    "last.1": "head",
}


def is_official_mapping(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "model.0.weight" in state_dict and "model.27.weight" in state_dict


def is_official_nonlocal_mapping(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "NL.theta.weight" in state_dict and "before_NL.0.weight" in state_dict


def is_official_patch_attention_mapping(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "NL_scale_1.F_Combine.weight" in state_dict and "before_NL.0.weight" in state_dict


def is_official_detector(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "first.1.weight" in state_dict and "down_path.0.block.1.weight" in state_dict


def mapping_from_official(state_dict: Mapping[str, torch.Tensor], source: str = "mapping") -> MappingNetwork:
    model = MappingNetwork(MappingConfig())
    return load_renamed(model, state_dict, OFFICIAL_MAPPING_MODULES, source, OFFICIAL_RESIDUAL_KEYS)


def nonlocal_mapping_from_official(
    state_dict: Mapping[str, torch.Tensor], source: str = "mapping"
) -> NonLocalMappingNetwork:
    model = NonLocalMappingNetwork(NonLocalMappingConfig())
    return load_renamed(model, state_dict, OFFICIAL_NONLOCAL_MAPPING_MODULES, source, OFFICIAL_RESIDUAL_KEYS)


def patch_attention_mapping_from_official(
    state_dict: Mapping[str, torch.Tensor], source: str = "mapping"
) -> PatchAttentionMappingNetwork:
    model = PatchAttentionMappingNetwork(PatchAttentionMappingConfig())
    return load_renamed(
        model, state_dict, OFFICIAL_PATCH_ATTENTION_MAPPING_MODULES, source, OFFICIAL_RESIDUAL_KEYS
    )


def detector_from_official(
    state_dict: Mapping[str, torch.Tensor], source: str = "detector"
) -> ScratchDetector:
    """The blur filters are constants of the architecture: stored values are used, missing ones rebuilt."""
    model = ScratchDetector(ScratchDetectorConfig())
    return load_renamed(
        model,
        state_dict,
        OFFICIAL_DETECTOR_MODULES,
        source,
        optional_suffixes=("num_batches_tracked", ".filt"),
    )
