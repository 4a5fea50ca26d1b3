"""Training on N processes (`torchrun --nproc_per_node=N`, DDP): where a process stands, and what the ranks share.

One process is the plain case: every function here is then the identity or close to it, and no process group is
started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the outputs and the checkpoint, prints, and reports to monitoring."""
        return self.rank == 0


def local_rank() -> int:
    """This process's index on its machine, as `torchrun` sets it (0 without torchrun): which GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> Dist:
    """Read the variables `torchrun` sets; start the process group (NCCL on GPUs, gloo on CPUs) when there is more
    than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank())


def close_distributed(where: Dist) -> None:
    """Wait for every rank, then end the process group (nothing on one process)."""
    if where.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, out of its DistributedDataParallel wrapper if it has one."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def shard(n: int, where: Dist) -> list[int]:
    """This rank's items of n (every world_size-th from its rank), without DistributedSampler's padding: gathered,
    the shards hold every item exactly once. On one process: every item, in order."""
    return list(range(where.rank, n, where.world_size))


def gather_rows(array: np.ndarray, where: Dist) -> np.ndarray:
    """Every rank's rows of its `shard`, gathered back into item order; the identity on one process."""
    if where.world_size == 1:
        return array
    parts: list[np.ndarray | None] = [None] * where.world_size
    dist.all_gather_object(parts, array)
    rows = np.concatenate([p for p in parts if p is not None])
    order = np.concatenate([np.arange(r, len(rows), where.world_size) for r in range(where.world_size)])
    out = np.empty_like(rows)
    out[order] = rows
    return out


def mean_over_ranks(value: float, where: Dist, device: torch.device) -> float:
    """The mean of `value` over the ranks; the value itself on one process."""
    if where.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / where.world_size
