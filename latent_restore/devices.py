"""Whether bfloat16 runs natively on the inference device.

The device itself is resolved by :func:`latent_restore.core.device.resolve_device`, shared with the
training loop; it is re-exported here for the pipeline's callers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latent_restore.core.device import resolve_device

__all__ = ["bf16_supported", "resolve_device"]


def bf16_supported(device: torch.device) -> bool:
    """bfloat16 is fast on CUDA and on CPUs with AVX-512 BF16 or AMX; elsewhere it is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False
