"""Validation: the accuracy of every head and decision rule on a dataset, sharded over processes."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from auxsurgery.data import make_loader
from auxsurgery.model import as_aux_model
from auxsurgery.train.distributed import DistContext
from auxsurgery.train.objective import HeadAccuracy
from auxsurgery.train.setup import amp_dtype


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    batch_size: int = 256,
    amp: str = "off",
    ctx: DistContext | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Accuracy of every head and of the vote/score/private rules on ``data`` (leaves ``model`` in eval mode).

    Returns ``{"head/<name>": acc, ..., "rule/<rule>": acc}``; a plain classifier reports
    ``head/public``. With ``ctx`` each process evaluates its shard and the counts are summed.
    """
    aux = as_aux_model(model)
    if ctx is None:
        ctx = DistContext(0, 1, next(aux.parameters()).device)
    aux.eval()
    indices = ctx.shard(len(data))
    loader = make_loader(torch.utils.data.Subset(data, indices), batch_size=batch_size, num_workers=num_workers)
    accuracy = HeadAccuracy(aux.head_names, ctx.device)
    dtype = amp_dtype(amp, ctx.device)
    for x, y in loader:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
            accuracy.update(aux(x), y, aux.alpha)
    ctx.sum(accuracy.counts)
    return accuracy.compute()
