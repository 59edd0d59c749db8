"""The one device resolution shared by the pipeline (``auto`` may pick MPS) and training (by rank)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latent_restore.core import device as device_module
from latent_restore.core.device import DeviceNotAvailableError, resolve_device


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def mac(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "mps_available", lambda: True)


def test_cuda_takes_the_local_rank_only_when_given(two_gpus: None) -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", 1) == torch.device("cuda", 0)
    assert resolve_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(DeviceNotAvailableError, match="only 2 CUDA"):
        resolve_device("cuda:2")


def test_auto_picks_mps_for_inference_not_for_training(mac: None) -> None:
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("auto", 0, auto_mps=False) == torch.device("cpu")
    assert resolve_device("mps", 0, auto_mps=False) == torch.device("mps")


def test_missing_and_unknown_devices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceNotAvailableError, match="no CUDA"):
        resolve_device("cuda", 0)
    with pytest.raises(DeviceNotAvailableError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(DeviceNotAvailableError, match="unknown device"):
        resolve_device("tpu-ish")


def test_pipeline_runs_only_the_inference_precisions(tiny_weights: Path) -> None:
    from latent_restore.pipeline import RestorationPipeline

    for precision in ("fp16", "fp64"):
        with pytest.raises(ValueError, match=precision):
            RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False, precision=precision)
    pipeline = RestorationPipeline.from_pretrained(tiny_weights, device="cpu", faces=False, precision="fp32")
    assert pipeline.dtype == torch.float32


@pytest.mark.parametrize(
    ("instructions", "bf16_seconds", "expected"),
    [
        (False, 0.001, torch.float32),  # emulated: never probed, never chosen
        (True, 0.020, torch.float32),  # the instructions, but no faster kernel: fp32
        (True, 0.005, torch.bfloat16),
    ],
)
def test_cpu_bf16_only_where_it_is_faster_than_fp32(
    monkeypatch: pytest.MonkeyPatch, instructions: bool, bf16_seconds: float, expected: torch.dtype
) -> None:
    from latent_restore import devices

    probed = []

    def probe(dtype: torch.dtype, repeats: int = 3) -> float:
        probed.append(dtype)
        return bf16_seconds if dtype == torch.bfloat16 else 0.010

    monkeypatch.setattr(devices, "_cpu_has_bf16_instructions", lambda: instructions)
    monkeypatch.setattr(devices, "_probe_seconds", probe)
    devices._bf16_probe_faster.cache_clear()
    try:
        assert devices.inference_dtype("bf16", torch.device("cpu")) == expected
        assert devices.inference_dtype("fp32", torch.device("cpu")) == torch.float32
        assert bool(probed) == instructions
    finally:
        devices._bf16_probe_faster.cache_clear()


def test_the_bf16_probe_times_a_real_convolution() -> None:
    from latent_restore import devices

    seconds = devices._probe_seconds(torch.float32, repeats=1)
    assert seconds > 0 and seconds != float("inf")
