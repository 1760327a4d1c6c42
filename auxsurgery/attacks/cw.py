"""Carlini & Wagner's L2 attack (2017): the smallest L2 perturbation that fools, by optimisation."""
from __future__ import annotations

import torch
from torch import nn

from .base import Attack, l2_norms, per_sample
from .objectives import Objective
from .registry import register_attack


@register_attack
class CW(Attack):
    """Carlini-Wagner L2: minimise ``||x' - x||^2 - c * objective(x')`` with Adam in tanh space.

    ``x' = (tanh(w) + 1) / 2`` stays in [0, 1] for any ``w``, so the optimiser needs no
    projection. The constant ``c`` is tuned per sample by binary search: halved towards
    the last failure after a success, multiplied by 10 until the first success. The
    default objective is CW's margin loss on head 0 (``margin-public``); choose the logits
    it works on through the objective: ``margin-ensemble`` (log of Algorithm 2's scores),
    ``margin-head:<k>``, or ``vote-margin`` (every head at once); ``kappa`` is CW's
    confidence. Returns, per sample, the closest point that fooled the decision rule,
    else the clean input. With ``eps`` set, results are projected into the L2 ball.
    Deterministic: it starts from the clean input and uses no randomness.

    Args:
        c: initial trade-off constant between distance and objective.
        steps: Adam steps per value of ``c``.
        lr: Adam learning rate.
        search_steps: values of ``c`` tried (binary search rounds).
        (others: see :class:`Attack`)
    """

    kind = "white-box"
    norms = ("l2",)
    eps_optional = True

    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "margin-public",
        c: float = 0.1,
        kappa: float = 0.0,
        steps: int = 100,
        lr: float = 0.01,
        search_steps: int = 5,
        eps: float | None = None,
        rule: str = "vote",
        targeted: bool = False,
    ):
        super().__init__(model, objective, eps, "l2", rule, targeted=targeted, kappa=kappa)
        if c <= 0 or lr <= 0 or steps < 1 or search_steps < 1:
            raise ValueError(f"need c > 0, lr > 0, steps >= 1, search_steps >= 1; got c={c}, lr={lr}, "
                             f"steps={steps}, search_steps={search_steps}")
        self.c, self.steps, self.lr, self.search_steps = c, steps, lr, search_steps

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Slightly inside (-1, 1) so that atanh stays finite at the box edges.
        w_clean = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        c = torch.full((x.shape[0],), self.c, device=x.device, dtype=x.dtype)
        c_low, c_high = torch.zeros_like(c), torch.full_like(c, float("inf"))
        best_dist, x_best = torch.full_like(c, float("inf")), x
        for _ in range(self.search_steps):
            w = w_clean.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros_like(c, dtype=torch.bool)
            for _ in range(self.steps):
                with torch.enable_grad():
                    x_adv = (torch.tanh(w) + 1) / 2
                    logits = self.logits(x_adv)
                    dist = l2_norms(x_adv - x).square()
                    total = (dist - c * self.loss(logits, y)).sum()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                # Judge the point the logits belong to (before this step's update).
                fooled = self.fooled(logits.detach(), y, x_adv.detach())
                closer = fooled & (dist.detach() < best_dist)
                best_dist = torch.where(closer, dist.detach(), best_dist)
                x_best = torch.where(per_sample(closer, x), x_adv.detach(), x_best)
                succeeded |= fooled
            c_high = torch.where(succeeded, torch.minimum(c_high, c), c_high)
            c_low = torch.where(succeeded, c_low, torch.maximum(c_low, c))
            c = torch.where(c_high.isinf(), c * 10, (c_low + c_high) / 2)
        return x_best
