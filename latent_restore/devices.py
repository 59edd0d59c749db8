"""The inference dtype: whether bfloat16 runs natively on the device the pipeline runs on.

The device itself is resolved by :func:`latent_restore.core.device.resolve_device`, shared with the
training loop; it is re-exported here for the pipeline's callers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from latent_restore.core.device import INFERENCE_PRECISIONS, Precision, resolve_device

__all__ = ["bf16_supported", "inference_dtype", "resolve_device"]

logger = logging.getLogger(__name__)


def inference_dtype(precision: Precision | str, device: torch.device) -> torch.dtype:
    """The networks' dtype for ``precision`` on ``device``: bfloat16 only where it runs natively.

    Raises:
        ValueError: a precision the pipeline does not offer (``fp16``, ``fp64`` are training's).
    """
    precision = Precision(precision)
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"{precision.value!r} is not a valid Precision for inference: use fp32 or bf16")
    if precision is Precision.BF16:
        if bf16_supported(device):
            return torch.bfloat16
        logger.warning("bf16 is not supported natively on %s; running in fp32", device)
    return torch.float32


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
