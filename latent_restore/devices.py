"""The inference device: ``auto`` or a named one, checked against this machine, and whether
bfloat16 runs natively on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latent_restore.options import DeviceNotAvailableError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceNotAvailableError(
            f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceNotAvailableError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceNotAvailableError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DeviceNotAvailableError(f"--device {name}: Apple MPS is not available on this machine")
    return device


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
