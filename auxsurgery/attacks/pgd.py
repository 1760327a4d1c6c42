"""PGD: projected gradient ascent in an L-inf or L2 ball (Madry et al. 2018)."""
from __future__ import annotations

import torch
from torch import nn

from .._utils import renamed_kwargs
from .base import Attack, Survivors, take
from .objectives import Objective
from .registry import register_attack


@register_attack
class PGD(Attack):
    """Projected gradient ascent on the objective, with random start and restarts.

    Each step is one forward and one backward pass: ``x <- P(x + step_size * d)`` with
    ``d`` the sign of the gradient (L-inf) or the normalised gradient (L2) and ``P`` the
    projection onto the eps ball and [0, 1]. A run returns, per sample, the first iterate
    that fools the decision rule (the start included), else its last iterate; a sample
    that fools is dropped from the working batch, so later steps cost only the samples
    still robust. With ``early_stop=False`` every sample takes every step and the last
    iterate is returned: the classic algorithm, as the paper's PGD (BIM) rows need, since
    they judge one set of examples by every rule and head. With ``restarts > 1`` every sample keeps the worst case over runs,
    judged by the decision rule (see :meth:`Attack.best_of_restarts`).

    Samples that never fool follow exactly the trajectory of a plain PGD run: a run draws
    its random start for its whole batch at once and nothing afterwards, so dropping the
    others changes nothing for them (up to a model whose output for one sample depends on
    the batch size, e.g. kernels picked by batch size).

    Args:
        steps: gradient steps per run.
        step_size: step length (default ``2.5 * eps / steps``, Madry et al.'s choice).
        random_start: start each run from a uniformly random point of the ball.
        restarts: runs per sample; each needs ``random_start``.
        early_stop: keep each sample's first fooling iterate and stop computing on it.
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
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        rule: str = "vote",
        seed: int | None = None,
        targeted: bool = False,
        kappa: float = 0.0,
        precision: str = "fp32",
        early_stop: bool = True,
    ):
        super().__init__(model, objective, eps, norm, rule, seed, targeted, kappa, precision)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 need random_start=True (otherwise every run is the same)")
        if step_size is not None and step_size < 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        self.steps = steps
        self.step_size = 2.5 * eps / steps if step_size is None else step_size
        self.random_start = random_start
        self.restarts = restarts
        self.early_stop = early_stop

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.best_of_restarts(x, y, self.restarts, self._run)

    def _run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        ball = self.ball(x)
        x_adv = ball.random_point(self.generator) if self.random_start else x
        working = Survivors(x_adv.clone())
        for _ in range(self.steps):
            # The logits of this step's forward judge the current iterate: no extra forward.
            _, grad, logits = self.loss_and_grad(x_adv, y, target)
            fooled = self.fooled(logits, y, x_adv) if self.early_stop else None
            if fooled is not None and fooled.any():
                keep = working.retire(fooled, x_adv)
                if not working:
                    return working.result
                x_adv, grad, y, target = take(keep, x_adv, grad, y, target)
                ball = ball.select(keep)
            x_adv = ball.step(x_adv, grad, self.step_size)
        return working.finish(x_adv)
