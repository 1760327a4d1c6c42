"""Multi-process data parallelism: the same ``finetune`` under ``torchrun --nproc_per_node N``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in
each process's environment; :func:`distributed_context` joins that process group (gloo
on CPU, nccl on CUDA) and describes this process's place in it. Without those
variables it describes a single process and every collective is a no-op.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from auxsurgery._utils import resolve_device


@dataclass(frozen=True)
class DistContext:
    """This process's rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes (in place; a no-op for one process)."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any of them."""
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item())

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size > 1:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` inside DistributedDataParallel when there are several processes."""
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def train_sampler(self, dataset, seed: int) -> DistributedSampler:
        """Shuffled sampler giving this process its shard; the order is a function of (seed, epoch).

        Every process draws the same permutation and takes every ``world_size``-th index,
        so with a per-process batch of ``batch / world_size`` the union of the processes'
        k-th batches is the single-process run's k-th batch.
        """
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)

    def shard(self, n: int) -> range:
        """This process's share of ``n`` evaluation samples: each sample is seen exactly once."""
        return range(self.rank, n, self.world_size)


def launched_rank() -> int:
    """This process's rank as torchrun launched it (0 outside torchrun); readable before and after the run."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def distributed_context(device: str = "auto") -> Iterator[DistContext]:
    """Join torchrun's process group if the environment describes one; leave it on exit.

    A process group that already exists (set up by the caller) is used and left alone.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not dist.is_initialized():
        yield DistContext(0, 1, resolve_device(device))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    created = not dist.is_initialized()
    if created:
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    try:
        yield DistContext(dist.get_rank(), dist.get_world_size(), target)
    finally:
        if created:
            dist.destroy_process_group()
