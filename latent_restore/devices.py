"""The inference dtype: whether bfloat16 runs natively on the device the pipeline runs on.

The device itself is resolved by :func:`latent_restore.core.device.resolve_device`, shared with the
training loop; it is re-exported here for the pipeline's callers.
"""

from __future__ import annotations

import functools
import logging
import time
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
        logger.warning("bf16 is not native, or not faster than fp32, on %s; running in fp32", device)
    return torch.float32


def bf16_supported(device: torch.device) -> bool:
    """bfloat16 is fast on CUDA and, where a probe confirms it, on CPUs with AVX-512 BF16 or AMX.

    Elsewhere it is emulated (4-8x slower than float32). Even with the instructions, oneDNN does
    not always have bfloat16 kernels for every convolution, so on a CPU a short probe convolution
    must also run faster in bfloat16: ``--precision bf16`` is then never slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16_instructions() and _bf16_probe_faster()
    return False


def _cpu_has_bf16_instructions() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _probe_seconds(dtype: torch.dtype, repeats: int = 3) -> float:
    """Best time of a 3x3 convolution shaped like the networks' (128 channels, 64x64, channels-last)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 64, 64, generator=generator).to(dtype, memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, generator=generator).to(dtype, memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, w, padding=1)  # warm-up: kernel selection
        for _ in range(repeats):
            start = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def _bf16_probe_faster() -> bool:
    fp32, bf16 = _probe_seconds(torch.float32), _probe_seconds(torch.bfloat16)
    logger.debug("bf16 probe convolution: %.2f ms against %.2f ms in fp32", bf16 * 1e3, fp32 * 1e3)
    return bf16 < fp32
