"""One device and precision vocabulary for inference and training.

The pipeline and the training loop used to carry their own ``Precision`` enum and their own
``resolve_device``; they now share these, so ``--device``/``device:`` and ``--precision``/
``precision:`` mean the same thing everywhere. The differences between the two callers are explicit
arguments rather than a second copy:

* ``local_rank``: under ``torchrun`` each process trains on its own GPU, so a bare ``cuda`` (or
  ``auto`` on a CUDA machine) means ``cuda:LOCAL_RANK``. Inference passes nothing and keeps the
  bare ``cuda`` (the current CUDA device).
* ``auto_mps``: whether ``auto`` may pick Apple MPS. Inference does (the networks run there);
  training does not, and trains on the CPU of a Mac unless ``device: mps`` is asked for by name,
  because the loop's float64 checks, fp16 gradient scaling and DDP are not supported or not tested
  on MPS. Asking for ``mps`` explicitly works for both.
"""

from __future__ import annotations

import enum

import torch

__all__ = [
    "INFERENCE_PRECISIONS",
    "DeviceNotAvailableError",
    "Precision",
    "mps_available",
    "resolve_device",
]


class Precision(str, enum.Enum):
    """Numeric precision of the forward passes.

    Inference accepts ``fp32`` and ``bf16`` (see :data:`INFERENCE_PRECISIONS`); training all four.

    ``bf16`` and ``fp16`` autocast the forward passes in training (weights and optimiser state stay
    float32); in inference ``bf16`` casts the networks. ``fp64`` runs everything in float64: far too
    slow for real training, it exists for numerical checks. Float32 rounding noise is amplified by
    Adam (whose first steps move every weight by about ``lr * sign(grad)``, even where the true
    gradient is zero, as for a convolution's bias in front of an instance norm); in float64 two runs
    that differ only in summation order (one process against DDP, say) end a few steps within ~1e-8
    of each other.
    """

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP64 = "fp64"


INFERENCE_PRECISIONS = (Precision.FP32, Precision.BF16)
"""The precisions the restoration pipeline offers; ``fp16`` and ``fp64`` are training settings."""


class DeviceNotAvailableError(ValueError):
    """The asked-for device does not exist on this machine."""


def mps_available() -> bool:
    """Whether this PyTorch build has Apple MPS and the machine can use it."""
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(
    name: str | torch.device = "auto", local_rank: int | None = None, *, auto_mps: bool = True
) -> torch.device:
    """The device ``name`` means on this machine.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        local_rank: the process's rank on its node under ``torchrun``; a device of type CUDA without
            an index becomes ``cuda:local_rank``. ``None`` leaves a bare ``cuda`` as it is.
        auto_mps: whether ``auto`` picks MPS when CUDA is absent (see the module docstring).

    Returns:
        ``auto``: CUDA, then MPS (when ``auto_mps``), then the CPU; otherwise the named device.

    Raises:
        DeviceNotAvailableError: an unknown name, or a device this machine does not have.
    """
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif auto_mps and mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DeviceNotAvailableError(
                f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
            ) from None
        _check_available(name, device)
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def _check_available(name: str | torch.device, device: torch.device) -> None:
    """Raise :class:`DeviceNotAvailableError` when ``device`` (asked for as ``name``) is not here."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceNotAvailableError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceNotAvailableError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not mps_available():
        raise DeviceNotAvailableError(f"--device {name}: Apple MPS is not available on this machine")
