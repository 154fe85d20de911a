"""Running under ``torchrun``: process group, data sharding, reductions.

Without torchrun's environment everything here degrades to the single
process case, so the rest of the code calls it unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistContext", "init_distributed", "is_timeout", "ShardSampler", "all_reduce_sum",
           "reduce_state"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 300.0) -> DistContext:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs).
    ``timeout_s``: how long a collective waits for the other processes
    before failing (gloo raises, NCCL's watchdog ends the process): a stopped
    or crashed rank ends the job instead of hanging it (gloo's default is 30
    minutes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank)


def is_timeout(error: BaseException) -> bool:
    """Whether an exception is a collective that gave up waiting."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("Timed out" in text or "timed out" in text
                                                or "Timeout" in text)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each image is evaluated
    exactly once across ranks (unlike DistributedSampler, which pads)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks (in place on a copy); identity in a single process."""
    if not ctx.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def reduce_state(state: dict, ctx: DistContext, device: torch.device) -> dict:
    """An evaluator's ``state()`` summed over ranks (values as tensors on
    ``device`` for the reduction; the returned ones on the CPU)."""
    if not ctx.enabled:
        return state
    reduced = {}
    for key, value in state.items():
        array = np.asarray(value) if not isinstance(value, torch.Tensor) else None
        # Backends sum few unsigned types: uint16 (per-image histograms) as int32.
        wide = array is not None and array.dtype == np.uint16
        tensor = torch.as_tensor(array.astype(np.int32) if wide else value).to(device)
        total = all_reduce_sum(tensor, ctx).cpu()
        reduced[key] = total.numpy().astype(np.uint16) if wide else total
    return reduced
