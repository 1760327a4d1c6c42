"""Tiny models and data for the attack tests: built by hand, independent of the surgery code."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from auxsurgery.model import AuxModel

SHAPE = (1, 8, 8)  # small images: Square needs [B, C, H, W]
CLASSES = 4  # at least 3, for the DLR objectives


class Normalize(nn.Module):
    """Fixed mean/std normalisation: lives inside the model, as the attacks assume."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


class Net(nn.Module):
    """A small conv net exposing two intermediate features for aux heads."""

    def __init__(self, classes: int = CLASSES, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(SHAPE[0], width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.fc = nn.Linear(width * 16, classes)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = F.relu(self.conv1(x))
        f2 = F.relu(self.conv2(f1))
        return {"output": self.fc(f2.flatten(1)), "f1": f1, "f2": f2}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["output"]


class Trunk(nn.Module):
    """The AuxModel trunk: one pass of ``net`` returning its logits and features."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.features(x)


def head(channels: int, classes: int = CLASSES) -> nn.Module:
    """An Aux Block: a one-hidden-layer CNN head (as in the paper's Fig. 2)."""
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, classes))


def plain_model(seed: int = 0) -> nn.Module:
    """A plain ``[B, C]`` classifier taking [0, 1] pixels."""
    torch.manual_seed(seed)
    return nn.Sequential(Normalize(), Net())


def aux_model(seed: int = 0, alpha=None) -> AuxModel:
    """An AuxModel with two aux heads (on ``f1`` and ``f2``), three heads in all."""
    torch.manual_seed(seed)
    net = Net()
    normalize = Normalize()
    return AuxModel(Trunk(net), heads=[head(8), head(8)], attach_points=["f1", "f2"],
                    backbone=nn.Sequential(normalize, net), normalize=normalize, alpha=alpha)


def dataset(n: int, seed: int = 0, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable synthetic dataset: one random prototype image per class plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    prototypes = 0.25 + 0.5 * torch.rand((CLASSES, *SHAPE), generator=torch.Generator().manual_seed(1234))
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = prototypes[y] + noise * torch.randn((n, *SHAPE), generator=g)
    return x.clamp(0, 1), y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150, seed: int = 0) -> nn.Module:
    """Train every head of ``model`` (summed cross-entropy) with Adam; returns it in eval mode."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,))
        logits = model(x[batch])
        logits = logits if logits.dim() == 3 else logits.unsqueeze(0)
        loss = sum(F.cross_entropy(z, y[batch]) for z in logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@contextmanager
def count_forwards(module: nn.Module) -> Iterator[list[int]]:
    """Count ``module``'s forward calls inside the block, in a one-element list."""
    calls = [0]

    def hook(_module, _inputs):
        calls[0] += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@functools.cache
def trained_plain_model() -> nn.Module:
    """A plain classifier trained to ~100% clean accuracy on :func:`dataset` (cached per process)."""
    x, y = dataset(1200, seed=0)
    return train(plain_model(), x, y)


@functools.cache
def trained_aux_model() -> AuxModel:
    """An AuxModel with all three heads trained on :func:`dataset` (cached per process)."""
    x, y = dataset(1200, seed=0)
    return train(aux_model(), x, y)
