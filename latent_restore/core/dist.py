"""torchrun / DDP helpers: who am I, set up and tear down the process group, shard the data.

``torchrun`` describes the job through environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a plain ``python`` launch has none of them and is
treated as a job of one process, so every training script runs unchanged either way. ``WORLD_SIZE``
is what makes a job distributed: a ``RANK`` or ``LOCAL_RANK`` left in the environment without it
(a shell or cluster profile that exports one) is ignored with a warning, rather than turning the
run into a non-main rank that trains and writes nothing. An inconsistent torchrun environment
raises :class:`DistributedEnvError` with what to do. Side effects that must happen once per job
(writing checkpoints, logs, the run folder) go through :func:`is_main_process` or
:func:`main_process_only`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Position of this process in the job.

    Attributes:
        rank: global index of this process, ``0 .. world_size - 1``.
        world_size: number of processes in the job.
        local_rank: index of this process on its machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DistributedEnvError(RuntimeError):
    """The torchrun environment variables contradict each other; the message says how to launch."""


_LAUNCH_HINT = "launch distributed runs with torchrun (it sets them all), or unset them for a one-process run"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedEnvError(f"environment variable {name}={value!r} is not an integer") from None


def stray_variables() -> dict[str, str]:
    """``RANK`` / ``LOCAL_RANK`` set without ``WORLD_SIZE``: not a torchrun job, so they are ignored."""
    if os.environ.get("WORLD_SIZE", ""):
        return {}
    return {name: os.environ[name] for name in ("RANK", "LOCAL_RANK") if os.environ.get(name, "")}


def _env_info() -> DistInfo:
    """This process's place in the job as torchrun's environment describes it (see the module docstring)."""
    if not os.environ.get("WORLD_SIZE", ""):
        return DistInfo()
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise DistributedEnvError(f"WORLD_SIZE={world_size} must be at least 1: {_LAUNCH_HINT}")
    if not os.environ.get("RANK", "") and world_size > 1:
        raise DistributedEnvError(f"WORLD_SIZE={world_size} is set but RANK is not: {_LAUNCH_HINT}")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise DistributedEnvError(
            f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size}): {_LAUNCH_HINT}"
        )
    if local_rank < 0:
        raise DistributedEnvError(f"LOCAL_RANK={local_rank} is negative: {_LAUNCH_HINT}")
    return DistInfo(rank, world_size, local_rank)


def dist_info() -> DistInfo:
    """Rank, world size and local rank: from the process group if one is up, else from torchrun's env.

    Raises:
        DistributedEnvError: ``WORLD_SIZE`` is set and the other variables do not fit it.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return _env_info()


def get_rank() -> int:
    return dist_info().rank


def get_world_size() -> int:
    return dist_info().world_size


def is_main_process() -> bool:
    """True on rank 0 (and in a plain one-process run)."""
    return dist_info().is_main


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the torchrun job if there is one; a plain launch returns a one-process :class:`DistInfo`.

    The backend follows the device: NCCL for CUDA, gloo otherwise (CPU tests, and machines without
    NCCL). On CUDA the process is pinned to ``cuda:LOCAL_RANK`` first, so every rank gets its own
    GPU.

    Args:
        device: the device this process trains on; ``None`` means CUDA when available.

    Returns:
        This process's :class:`DistInfo`.

    Raises:
        DistributedEnvError: the torchrun variables are inconsistent or incomplete.
    """
    info = dist_info()
    stray = stray_variables()
    if stray and not is_initialized():
        logger.warning(
            "%s set but WORLD_SIZE is not: this is not a torchrun job, running as one process "
            "(unset %s to silence this warning)",
            " and ".join(f"{name}={value}" for name, value in stray.items()),
            " and ".join(stray),
        )
    if not info.distributed or is_initialized():
        return info
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "")]
    if missing:
        raise DistributedEnvError(
            f"WORLD_SIZE={info.world_size} and RANK={info.rank} are set but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: {_LAUNCH_HINT}"
        )
    use_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if use_cuda else "gloo"
    torch_dist.init_process_group(backend=backend)
    logger.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return dist_info()


def destroy_distributed() -> None:
    """Leave the process group (no-op in a one-process run)."""
    if is_initialized():
        torch_dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a one-process run)."""
    if is_initialized():
        torch_dist.barrier()


def main_process_only(fn: F) -> F:
    """Decorator: run ``fn`` on rank 0 only; other ranks get ``None`` without calling it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_main_process():
            return fn(*args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]


def average_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Mean of each scalar over the ranks that reported it (identity in a one-process run).

    Ranks may report different keys (a loss that a batch did not need); every rank must call this
    at the same point, as with any collective.
    """
    if not is_initialized():
        return dict(values)
    gathered: list[dict[str, float] | None] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, dict(values))
    keys = sorted({k for g in gathered if g for k in g})
    return {
        k: sum(g[k] for g in gathered if g and k in g) / sum(1 for g in gathered if g and k in g)
        for k in keys
    }


def gather_global_batch(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-sample tensor of the whole step's batch, in one process's order, and this rank's places in it.

    For losses that look across the batch (the latent discriminator's balancing of real and
    synthetic samples): computed on the gathered batch, they give every rank exactly what one
    process with ``world_size`` times the batch size computes. :class:`ShardedSampler` deals each
    epoch's order round-robin, so sample ``j`` of rank ``r``'s micro-batch is sample
    ``j * world_size + r`` of that process's batch. Every rank must call this at the same point
    with the same number of samples (the loader drops incomplete batches).

    Args:
        values: ``N x ...`` values of this rank's samples.

    Returns:
        ``(global_values, positions)``: ``N * world_size x ...`` values and this rank's ``N``
        indices into them (``values`` and ``0..N-1`` in a one-process run).
    """
    positions = torch.arange(values.shape[0], device=values.device)
    if not is_initialized():
        return values, positions
    world, rank = torch_dist.get_world_size(), torch_dist.get_rank()
    gathered = [torch.empty_like(values) for _ in range(world)]
    torch_dist.all_gather(gathered, values.contiguous())
    global_values = torch.stack(gathered, dim=1).reshape(-1, *values.shape[1:])
    return global_values, positions * world + rank


def assert_replicas_in_sync(models: dict[str, torch.nn.Module], rtol: float = 1e-9) -> None:
    """Raise if any model's parameters differ between ranks (no-op in a one-process run).

    DDP keeps replicas identical only if every rank reduces every gradient; a task that skips a
    backward on some rank drifts silently. Comparing a float64 checksum per model at the end of a
    run turns that into an error.
    """
    if not is_initialized():
        return
    local = {
        name: float(sum(p.detach().double().sum() for p in m.parameters())) for name, m in models.items()
    }
    gathered: list[dict[str, float] | None] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, local)
    for name, value in local.items():
        others = [g[name] for g in gathered if g is not None]
        if any(abs(v - value) > rtol * max(1.0, abs(value)) for v in others):
            raise RuntimeError(f"DDP replicas of {name!r} differ across ranks: checksums {others}")
    logger.info("DDP replicas in sync across %d ranks", len(gathered))


class ShardedSampler(Sampler[int]):
    """Deterministic shuffled sampler that shards across ranks and can start mid-epoch.

    The order of epoch ``e`` is a permutation drawn from a generator seeded with ``seed + e``, so it
    depends on nothing but (seed, epoch); each rank takes every ``world_size``-th index of it
    (dropping the tail that does not divide evenly, so all ranks run the same number of steps).
    :meth:`set_position` skips the samples this rank already consumed, which is how a resumed run
    continues with exactly the batches an uninterrupted run would have seen, without loading and
    discarding them.

    Args:
        length: size of the dataset.
        seed: base seed of the shuffling.
        rank: this process's rank.
        world_size: number of processes sharing the data.
        shuffle: ``False`` keeps the dataset order (sharded).
    """

    def __init__(
        self, length: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        if length < world_size:
            raise ValueError(f"dataset of {length} items cannot be shared by {world_size} processes")
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        """Samples each rank sees per epoch."""
        return self.length // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Continue epoch ``epoch`` after the first ``start`` samples of this rank's share."""
        self.epoch = epoch
        self.start = start

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        usable = self.per_rank * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
