"""Data-parallel training under ``torchrun``: process context, deterministic sharding, DDP wrapping.

The training loop is the same in one process and in ``N`` processes. What
changes is captured by a :class:`DistContext`: which rank this is, how many
ranks there are, which device it trains on. Each rank reads its own slice of
every *global* batch (:func:`epoch_batches`), so a run with ``N`` ranks and a
global batch of ``B`` sees exactly the samples of a one-process run with batch
``B``; DistributedDataParallel averages the gradients, so both runs take the
same steps up to floating-point rounding (and BatchNorm, whose statistics are
per rank).

Launch with ``python -m torch.distributed.run --nproc_per_node=N script.py``;
:func:`fit <mtgraph.train.fit>` finds the environment ``torchrun`` sets and
joins the process group (gloo on CPU, nccl on CUDA). Call :func:`shutdown`
when the script is done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mtgraph.errors import ConfigError

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown",
    "epoch_batches",
    "epoch_seed",
    "wrap_module",
    "all_reduce_mean",
    "barrier",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly one-process) run.

    Attributes:
        rank: this process's rank, 0..world_size-1.
        world_size: number of processes.
        device: the device this process trains on.

    Examples:
        >>> from mtgraph.train import DistContext
        >>> DistContext().is_main, DistContext().distributed
        (True, False)
        >>> DistContext(rank=1, world_size=2).is_main
        False
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the rank that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str | torch.device | None = None, backend: str | None = None) -> DistContext:
    """Return this process's :class:`DistContext`, joining the process group if ``torchrun`` started us.

    Without the ``torchrun`` environment (``WORLD_SIZE`` unset or 1) this is a
    one-process context on ``device`` (default: CUDA if available, else CPU).
    Under ``torchrun`` the default device is ``cuda:LOCAL_RANK`` when CUDA is
    available, else CPU, and the default backend is nccl on CUDA, gloo on CPU.
    An already initialised process group is reused.

    Raises:
        ConfigError: ``WORLD_SIZE``/``LOCAL_RANK`` are not integers, or
            ``WORLD_SIZE > 1`` on a torch build without distributed support.

    Examples:
        Outside ``torchrun`` this is a one-process context:

        >>> from mtgraph.train import init_distributed
        >>> ctx = init_distributed("cpu")
        >>> ctx.rank, ctx.world_size, ctx.device
        (0, 1, device(type='cpu'))
    """
    world = _env_int("WORLD_SIZE") or 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    if world <= 1:
        chosen = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistContext(0, 1, chosen)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    local_rank = _env_int("LOCAL_RANK") or 0
    if device is not None:
        chosen = torch.device(device)
    elif torch.cuda.is_available():
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if chosen.type == "cuda" else "gloo"))
    return DistContext(dist.get_rank(), dist.get_world_size(), chosen)


def shutdown() -> None:
    """Leave the process group, if this process joined one.

    Examples:
        >>> from mtgraph.train import shutdown
        >>> shutdown()  # in one process there is nothing to leave: a no-op
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def epoch_seed(seed: int, stream: int, epoch: int) -> int:
    """A 63-bit seed that depends only on ``(seed, stream, epoch)``."""
    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def epoch_batches(
    num_samples: int,
    batch_size: int,
    *,
    seed: int,
    stream: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """The sample indices this rank reads in each step of one epoch.

    The epoch's order is a permutation drawn from ``(seed, stream, epoch)``
    alone, so a resumed run replays it exactly. It is cut into global batches
    of ``batch_size``; rank ``r`` takes items ``r, r + world_size, ...`` of
    each global batch. With several ranks a last global batch that is not a
    full ``batch_size`` is dropped, so every rank holds the same number of
    equally sized parts and the averaged gradient is the global batch's.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if batch_size % world_size:
        raise ConfigError(
            f"the global batch size {batch_size} does not divide among {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    if shuffle:
        generator = torch.Generator().manual_seed(epoch_seed(seed, stream, epoch))
        order = torch.randperm(num_samples, generator=generator).tolist()
    else:
        order = list(range(num_samples))
    batches = [order[i:i + batch_size] for i in range(0, num_samples, batch_size)]
    if batches and len(batches[-1]) < batch_size and (drop_last or world_size > 1):
        batches.pop()
    return [batch[rank::world_size] for batch in batches]


def wrap_module(module: nn.Module, ctx: DistContext, find_unused_parameters: bool = True) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when ``ctx`` is distributed, else ``module`` itself.

    Wrapping broadcasts rank 0's parameters and buffers to every rank, so a
    rewrite that initialised new weights differently on each rank is made
    consistent here. ``find_unused_parameters`` defaults to True because a
    multi-task graph may leave parameters without gradient in a step (a
    skipped block, a gate's unused path).
    """
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``values`` over every rank (``values`` itself in one process)."""
    if not ctx.distributed:
        return values
    reduced = values.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / ctx.world_size


def barrier(ctx: DistContext) -> None:
    """Wait until every rank reaches this point (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()
