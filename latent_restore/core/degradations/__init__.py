"""Synthetic old-photo degradations: deterministic ops, structured defects with masks, and a sampler.

``ops`` and ``scratches`` hold pure operations (parameters in, image out); ``sampler`` draws their
parameters from a :class:`DegradationConfig` with an injected :class:`numpy.random.Generator`.
"""

from latent_restore.core.degradations.sampler import (
    DegradationConfig,
    DegradationResult,
    Op,
    apply_op,
    released_v2_config,
    replay_degradation,
    sample_degradation,
    with_defects,
)

__all__ = [
    "DegradationConfig",
    "DegradationResult",
    "Op",
    "apply_op",
    "released_v2_config",
    "replay_degradation",
    "sample_degradation",
    "with_defects",
]
