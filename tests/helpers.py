"""Shared test helpers: where ../shared lives, data markers, fixture files, tiny and official weights,
training scripts run in-process. Fixtures built on them are in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
CLEAN_DIRS = [str(DATA / "clean" / "Set14"), str(DATA / "clean" / "Set5")]
"""The small clean photo folders the training tests use."""

needs_data = pytest.mark.skipif(not (DATA / "clean" / "Set14").is_dir(), reason="shared sample data missing")
"""Skip unless ../shared/data holds the small clean photo sets."""


def needs_shared(*relative: str) -> pytest.MarkDecorator:
    """Skip (saying what is missing) unless every ``../shared/<relative>`` exists.

    A clone without ``../shared`` beside it runs the core suite on data the tests make themselves.
    """
    missing = [r for r in relative if not (SHARED / r).exists()]
    return pytest.mark.skipif(bool(missing), reason=f"needs ../shared/{', ../shared/'.join(missing)}")


def fixture_dir() -> Path:
    """The equivalence-fixture directory: ``$LATENT_RESTORE_FIXTURES`` or ``../shared/spec/fixtures``."""
    return Path(os.environ.get("LATENT_RESTORE_FIXTURES", SHARED / "spec" / "fixtures"))


def fixture_index() -> dict[str, dict]:
    """The fixtures' ``index.json``; empty when ``../shared`` is absent (the tests then skip).

    Raises:
        FileNotFoundError: ``$LATENT_RESTORE_FIXTURES`` names a folder without ``index.json`` —
            a mistyped path must fail loudly, not collect zero cases.
    """
    path = fixture_dir() / "index.json"
    if not path.is_file():
        if os.environ.get("LATENT_RESTORE_FIXTURES"):
            raise FileNotFoundError(f"LATENT_RESTORE_FIXTURES={fixture_dir()} has no index.json")
        return {}
    return json.loads(path.read_text())


def fixture_entries(prefixes: tuple[str, ...]) -> list:
    """File names of the fixtures whose name starts with one of ``prefixes`` (one test each).

    Without any fixture folder, one parameter that skips and says why, so the run reports the
    missing fixtures instead of silently collecting nothing.
    """
    names = sorted(name for name in fixture_index() if name.startswith(prefixes))
    if names:
        return names
    reason = f"no equivalence fixtures at {fixture_dir()} (they come with ../shared/spec)"
    return [pytest.param(None, id="no-fixtures", marks=pytest.mark.skip(reason=reason))]


def _first_existing(candidates: Iterable[Path]) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"none of {[str(p) for p in candidates]} exists")


def manifest_path() -> Path:
    env = os.environ.get("LATENT_RESTORE_MANIFEST")
    fx = fixture_dir()
    return _first_existing(
        ([Path(env)] if env else [])
        + [fx.parent / "checkpoint-manifest.json", fx / "checkpoint-manifest.json"]
        + [SHARED / "spec" / "checkpoint-manifest.json"]
    )


def make_weights_module() -> ModuleType:
    """The normative weight-generation rule shipped beside the fixtures."""
    fx = fixture_dir()
    path = _first_existing([fx / "make_weights.py", SHARED / "spec" / "fixtures" / "make_weights.py"])
    spec = importlib.util.spec_from_file_location("fixture_make_weights", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def write_official_tree(root: Path, checkpoint_ids: Iterable[str], salt: int) -> Path:
    """Generate released checkpoints by the fixture rule and save them in the official containers/layout.

    The one implementation is ``benchmarks/_weights.py`` (the identity benchmark uses it too); this
    passes it the rule and manifest the tests resolve (``$LATENT_RESTORE_FIXTURES`` included).
    """
    fx = fixture_dir()
    rule = _first_existing([fx / "make_weights.py", SHARED / "spec" / "fixtures" / "make_weights.py"])
    return _benchmark_weights().write_rule_official_tree(
        root, checkpoint_ids, salt, rule_path=rule, manifest_path=manifest_path()
    )


def _benchmark_weights() -> ModuleType:
    """``benchmarks/_weights.py``, loaded by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_weights", REPO / "benchmarks" / "_weights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_weights(directory: Path, seed: int = 0) -> Path:
    """A weights directory with every component at a tiny size and random weights."""
    from face_enhance.generator import FaceGenerator, FaceGeneratorConfig
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

    torch.manual_seed(seed)
    vae = VAEConfig(base_channels=4, latent_channels=8, num_res_blocks=1)
    mapping = {"latent_channels": 8, "base_channels": 4, "max_channels": 16, "num_levels": 2, "num_blocks": 1}
    components = {
        Component.VAE_A: VAE(vae),
        Component.VAE_B_QUALITY: VAE(vae),
        Component.VAE_B_SCRATCH: VAE(vae),
        Component.MAPPING_QUALITY: MappingNetwork(MappingConfig(**mapping)),
        Component.MAPPING_SCRATCH: NonLocalMappingNetwork(
            NonLocalMappingConfig(**mapping, nonlocal_res_blocks=1)
        ),
        Component.MAPPING_HR: PatchAttentionMappingNetwork(
            PatchAttentionMappingConfig(
                **mapping, patch_sizes=(4, 2), pre_blocks=1, inter_blocks=1, post_blocks=1
            )
        ),
        Component.SCRATCH_DETECTOR: ScratchDetector(ScratchDetectorConfig(base_channels=4, depth=2)),
        Component.FACE_256: FaceGenerator(
            FaceGeneratorConfig(load_size=64, base_channels=4, spade_hidden_channels=4, num_upsamples=3)
        ),
    }
    for component, model in components.items():
        save_component(model, directory / component.value)
    return directory


def run_script(name: str, argv: list[str]) -> int:
    """Run ``scripts/<name>.py``'s ``main(argv)`` in this process (the entry points are thin)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return module.main(argv)
