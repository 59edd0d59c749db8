"""Acceptance rules of ``fixtures/README.md`` §3 for comparing against the reference implementation."""

from __future__ import annotations

import numpy as np
import torch


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_bounded_close(ours, ref, name: str, atol: float = 1e-3) -> float:
    """tanh outputs and probabilities: max |diff| <= 1e-3."""
    ours, ref = _np(ours), _np(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    diff = float(np.abs(ours.astype(np.float64) - ref).max())
    assert diff <= atol, f"{name}: max |diff| {diff:.3g} > {atol}"
    return diff


def assert_latent_close(ours, ref, name: str) -> float:
    """Latents and logits: max |diff| <= 1e-3 * max(1, max |ref|)."""
    ref_np = _np(ref)
    return assert_bounded_close(ours, ref_np, name, 1e-3 * max(1.0, float(np.abs(ref_np).max())))


def assert_uint8_close(ours, ref, name: str, max_fraction: float = 0.005) -> float:
    """Images through resizes or rounding: off by at most 1 level, on at most 0.5 % of the values."""
    ours, ref = _np(ours).astype(np.int16), _np(ref).astype(np.int16)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    diff = np.abs(ours - ref)
    assert diff.max() <= 1, f"{name}: a value differs by {diff.max()} levels"
    fraction = float((diff > 0).mean())
    assert fraction <= max_fraction, f"{name}: {fraction:.2%} of values differ"
    return fraction


def assert_exact(ours, ref, name: str) -> None:
    ours, ref = _np(ours), _np(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    mismatches = int((ours != ref).sum())
    assert mismatches == 0, f"{name}: {mismatches} values differ"


def assert_geometry_close(ours, ref, name: str, rtol: float = 1e-12) -> None:
    """Floating-point geometry (alignment matrices, landmark means): equal within ``rtol`` relative.

    Integer and index arrays stay exact: only the last bits of a float computation may differ
    between BLAS builds.
    """
    ours, ref = _np(ours), _np(ref)
    if not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(ours.dtype, np.floating)):
        assert_exact(ours, ref, name)
        return
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-300)
    diff = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
    assert diff <= rtol * scale, f"{name}: max |diff| {diff:.3g} > {rtol:g} x {scale:.3g}"
