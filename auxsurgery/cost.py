"""What the heads cost: parameters and FLOPs of each head relative to the backbone.

FLOPs come from ``torch.utils.flop_counter`` (a multiply-add counts as 2 FLOPs) on one
input of the model's input size, in eval mode.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._utils import preserved_state
from .graph.discovery import probe_input
from .model import AuxModel


@dataclass(frozen=True)
class HeadCost:
    """Parameters and FLOPs of one head, absolute and as a fraction of the backbone's."""

    name: str
    params: int
    flops: int
    params_ratio: float
    flops_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)``."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


def head_costs(aux: AuxModel, input_size: tuple[int, int, int] | None = None) -> list[HeadCost]:
    """One :class:`HeadCost` for the backbone (ratio 1) and one per aux head."""
    input_size = tuple(input_size or aux.spec["input_size"])
    backbone = aux.public_model()
    x = probe_input(backbone, input_size)[:1]
    with preserved_state(aux, buffers=True):
        aux.eval()
        base_flops = count_flops(backbone, x)
        base_params = count_params(backbone)
        with torch.no_grad():
            features = aux.trunk(aux.normalize(x))
        costs = [HeadCost("public", base_params, base_flops, 1.0, 1.0)]
        for name, adapter, head in zip(aux.attach_points, aux.adapters, aux.heads):
            flops = count_flops(lambda f: head(adapter(f)), features[name])
            params = count_params(head)
            costs.append(HeadCost(name, params, flops, params / max(base_params, 1), flops / max(base_flops, 1)))
    return costs
