"""APGD: step-size-free PGD with momentum (Croce & Hein 2020, the core of AutoAttack)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._utils import renamed_kwargs
from .base import Attack, Survivors, per_sample, take
from .objectives import Objective
from .registry import register_attack

MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j * steps)`` at which APGD may halve its step size.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``:
    checks start sparse and get denser as the run goes on.
    """
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The tolerance keeps float error (0.22 * 100 = 22.000000000000004) from adding a step.
    return sorted({max(1, math.ceil(pj * steps - 1e-9)) for pj in p[1:]})


@register_attack
class APGD(Attack):
    """Auto-PGD: gradient ascent with momentum and an automatic step-size schedule.

    The step starts at ``2 * eps`` and is halved at a checkpoint (see :func:`checkpoints`)
    when fewer than a fraction ``rho`` of the steps since the last one increased the
    objective, or when neither the step size nor the best objective changed since then;
    a halving restarts from the best point so far. The CE and DLR variants of the paper
    are objectives here: ``objective="public"`` is APGD-CE on head 0, ``"dlr-ensemble"``
    APGD-DLR on Algorithm 2's probabilities, and so on.

    A run returns, per sample, the first iterate that fools the decision rule, else the
    iterate with the highest objective. A sample that fools is dropped from the working
    batch at once: the rest of the run costs only the samples still robust, and the
    others' trajectories are exactly those of a run without dropping (all the state is
    per sample and the only randomness, the start, is drawn for the whole batch first).
    Untargeted (:class:`~auxsurgery.attacks.apgdt.APGDT` is the targeted version).

    Args:
        steps: gradient steps per run (one forward and backward each, plus one at the start).
        restarts: random restarts, each on the samples not fooled yet.
        rho: fraction of increasing steps below which the step size is halved.
        (others: see :class:`Attack`)
    """

    kind = "white-box"

    @renamed_kwargs(dtype="precision")
    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "public",
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        rule: str = "vote",
        seed: int | None = None,
        kappa: float = 0.0,
        precision: str = "fp32",
    ):
        super().__init__(model, objective, eps, norm, rule, seed, targeted=False, kappa=kappa, precision=precision)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
        self.steps = steps
        self.restarts = restarts
        self.rho = rho

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.best_of_restarts(x, y, self.restarts, self._run)

    def _run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
             steps: int | None = None) -> torch.Tensor:
        """One run of ``steps`` steps (default: the attack's); the step-size checkpoints scale with them."""
        steps = self.steps if steps is None else steps
        ball = self.ball(x)
        x_adv = ball.random_point(self.generator)
        working = Survivors(x_adv.clone())
        loss, grad, logits = self.loss_and_grad(x_adv, y, target)
        best_loss, x_best, grad_best = loss, x_adv, grad
        step = torch.full((x.shape[0],), 2.0 * self.eps, device=x.device, dtype=x.dtype)
        # State of the step-size test, reset at every checkpoint.
        increases = torch.zeros_like(loss)
        best_at_check, reduced_at_check, last_check = best_loss, torch.ones_like(loss, dtype=torch.bool), 0
        check_at = set(checkpoints(steps))
        x_prev, prev_loss = x_adv, loss

        for i in range(steps + 1):  # i: steps taken so far (0: the random start)
            if i > 0:
                z = ball.step(x_adv, grad, step)
                if i > 1:  # momentum: x_adv + a (z - x_adv) + (1 - a) (x_adv - x_prev), projected again
                    z = ball.project_(torch.lerp(x_adv, z, MOMENTUM).add_(x_adv - x_prev, alpha=1 - MOMENTUM))
                x_prev, x_adv = x_adv, z
                loss, grad, logits = self.loss_and_grad(x_adv, y, target)

            # The samples this iterate fools are done: it is their result (their first fooling
            # iterate), and the run goes on without them.
            fooled = self.fooled(logits, y, x_adv)
            if fooled.any():
                keep = working.retire(fooled, x_adv)
                if not working:
                    return working.result
                (x_adv, x_prev, loss, grad, prev_loss, best_loss, x_best, grad_best, step, increases,
                 best_at_check, reduced_at_check, y, target) = take(
                    keep, x_adv, x_prev, loss, grad, prev_loss, best_loss, x_best, grad_best, step, increases,
                    best_at_check, reduced_at_check, y, target)
                ball = ball.select(keep)
            if i == 0:
                continue

            increases += loss > prev_loss
            prev_loss = loss
            improved = loss > best_loss
            best_loss = torch.where(improved, loss, best_loss)
            x_best = torch.where(per_sample(improved, x_adv), x_adv, x_best)
            grad_best = torch.where(per_sample(improved, x_adv), grad, grad_best)

            if i in check_at:
                too_few_increases = increases < self.rho * (i - last_check)
                stalled = ~reduced_at_check & (best_loss <= best_at_check)
                reduce = too_few_increases | stalled
                step = torch.where(reduce, step / 2, step)
                x_adv = torch.where(per_sample(reduce, x_adv), x_best, x_adv)
                grad = torch.where(per_sample(reduce, x_adv), grad_best, grad)
                increases = torch.zeros_like(increases)
                best_at_check, reduced_at_check, last_check = best_loss, reduce, i
        return working.finish(x_best)
