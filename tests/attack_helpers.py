"""Tiny models and data for the attack tests: built by hand, independent of the surgery code."""
from __future__ import annotations

import functools
import math
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


class ScatterVote(nn.Module):
    """Three linear heads, ``classes`` classes, built so that untargeted losses scatter the heads.

    Around x = 0.5 every head says class 0 (true label of :func:`scatter_data`). Head h's nearest
    wrong class is h + 1, reachable along its own sign pattern ``p_h`` (a full-budget step along
    ``p_h`` alone flips head h; along ``p_0 + p_1 + p_2`` none), so an untargeted loss pulls each
    head towards its own class and at most one head, never a majority, flips. Class 4 sits far
    below in every head (logit -7) but along a shared pattern ``p_T`` a full-budget step lifts it
    to +2 in all three at once: a targeted attack at class 4 fools the vote, an untargeted one
    never aims there. Logits are linear in x, so budget ``eps`` (L-inf) sets the scale.
    """

    def __init__(self, eps: float, classes: int = 10, seed: int = 0):
        super().__init__()
        numel = math.prod(SHAPE)
        g = torch.Generator().manual_seed(seed)
        patterns = torch.randint(0, 2, (4, numel), generator=g).float() * 2 - 1  # p_0, p_1, p_2, p_T
        scale = eps * numel  # the gain of a full-budget step along a pattern: p . (eps p) = eps * numel
        weight, bias = torch.zeros(3, classes, numel), torch.full((3, classes), -10.0)
        for h in range(3):
            bias[h, 0] = 0.0
            weight[h, h + 1], bias[h, h + 1] = 1.5 * patterns[h] / scale, -1.0
            weight[h, 4], bias[h, 4] = 9.0 * patterns[3] / scale, -7.0
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hcd,bd->hbc", self.weight, x.flatten(1) - 0.5) + self.bias[:, None, :]


def scatter_data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs within 0.1 of 0.5 (no box clipping below eps 0.15), all of class 0."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.1 * (2 * torch.rand((n, *SHAPE), generator=g) - 1), torch.zeros(n, dtype=torch.long)


class NearTie(nn.Module):
    """Two classes whose logits differ by 0.002, less than bfloat16 resolves at 1.0: in fp32 it
    predicts class 1 everywhere, under bfloat16 autocast class 0 (a tie, broken to the first).
    Its tiny weights keep any [0, 1] input from changing the fp32 decision."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(math.prod(SHAPE), 2)
        with torch.no_grad():
            self.linear.weight.copy_(1e-6 * torch.randn(2, math.prod(SHAPE), generator=torch.Generator().manual_seed(0)))
            self.linear.bias.copy_(torch.tensor([1.0, 1.002]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@contextmanager
def batch_sizes(module: nn.Module) -> Iterator[list[int]]:
    """The batch size of every forward call of ``module`` inside the block."""
    sizes: list[int] = []
    handle = module.register_forward_pre_hook(lambda _module, inputs: sizes.append(inputs[0].shape[0]))
    try:
        yield sizes
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


# ---- reference runs: PGD and APGD as they were before samples were dropped -------------------


def _legacy_pgd_run(attack, x, y):
    """PGD's run before it kept first fooling iterates: every sample steps to the end, last iterate out."""
    ball = attack.ball(x)
    x_adv = ball.random_point(attack.generator) if attack.random_start else x
    for _ in range(attack.steps):
        _, grad, _ = attack.loss_and_grad(x_adv, y)
        x_adv = ball.step(x_adv, grad, attack.step_size)
    return x_adv


def _legacy_apgd_run(attack, x, y):
    """APGD's run before it dropped fooled samples: the whole batch steps to the end."""
    from auxsurgery.attacks.apgd import MOMENTUM, checkpoints
    from auxsurgery.attacks.base import per_sample

    ball = attack.ball(x)
    x_adv = ball.random_point(attack.generator)
    loss, grad, logits = attack.loss_and_grad(x_adv, y)
    fooled = attack.fooled(logits, y)
    x_found = x_adv
    best_loss, x_best, grad_best = loss, x_adv, grad
    step = torch.full((x.shape[0],), 2.0 * attack.eps, dtype=x.dtype)
    increases = torch.zeros_like(loss)
    best_at_check, reduced_at_check, last_check = best_loss, torch.ones_like(fooled), 0
    check_at = set(checkpoints(attack.steps))
    x_prev, prev_loss = x_adv, loss
    for i in range(attack.steps):
        z = ball.step(x_adv, grad, step)
        if i > 0:
            z = ball.project_(torch.lerp(x_adv, z, MOMENTUM).add_(x_adv - x_prev, alpha=1 - MOMENTUM))
        x_prev, x_adv = x_adv, z
        loss, grad, logits = attack.loss_and_grad(x_adv, y)
        newly_fooled = attack.fooled(logits, y) & ~fooled
        x_found = torch.where(per_sample(newly_fooled, x), x_adv, x_found)
        fooled = fooled | newly_fooled
        increases += loss > prev_loss
        prev_loss = loss
        improved = loss > best_loss
        best_loss = torch.where(improved, loss, best_loss)
        x_best = torch.where(per_sample(improved, x), x_adv, x_best)
        grad_best = torch.where(per_sample(improved, x), grad, grad_best)
        if i + 1 in check_at:
            reduce = (increases < attack.rho * (i + 1 - last_check)) | (~reduced_at_check & (best_loss <= best_at_check))
            step = torch.where(reduce, step / 2, step)
            x_adv = torch.where(per_sample(reduce, x), x_best, x_adv)
            grad = torch.where(per_sample(reduce, x), grad_best, grad)
            increases = torch.zeros_like(increases)
            best_at_check, reduced_at_check, last_check = best_loss, reduce, i + 1
    return torch.where(per_sample(fooled, x), x_found, x_best)


def legacy_attack(attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One run (restarts=1) of ``attack`` (a PGD or APGD) as the code before sample dropping ran it."""
    from auxsurgery.attacks.base import enforce_bounds, frozen

    run = {"PGD": _legacy_pgd_run, "APGD": _legacy_apgd_run}[type(attack).__name__]
    attack.generator = torch.Generator().manual_seed(attack.seed)
    with frozen(attack.model):
        x_adv = run(attack, x, y)
    return enforce_bounds(x_adv.detach(), x, attack.eps, attack.norm)
