"""Reproducibility without saving generator states: every random draw of a run is a
function of the seed and of where the run is, so resuming only needs the epoch and the
step within it.

- data order: a permutation seeded by (seed, epoch) (:class:`DistributedSampler`);
- augmentation: each sample's transform is seeded by (seed, epoch, index)
  (:class:`auxsurgery.data.SeededAugmentation`);
- model randomness (dropout, PGD random starts): the global generator is reseeded
  from (seed, rank, step) before every step (:func:`seed_step`).

A resumed run therefore replays the interrupted one bit for bit (same device, same
thread count), whatever the number of loader workers.
"""
from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import Sampler

from auxsurgery._utils import derive_seed


def seed_step(seed: int, rank: int, step: int, device: torch.device) -> None:
    """Reseed the global generators from (seed, rank, step): a pure function of the run's position."""
    step_seed = derive_seed(seed, rank, step)
    torch.default_generator.manual_seed(step_seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(step_seed)


class SkipFirst(Sampler):
    """``sampler`` without its first ``skip`` indices: where a resumed epoch picks up."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip
