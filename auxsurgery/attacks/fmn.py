"""FMN: Fast Minimum-Norm attacks through adaptive norm constraints (Pintor et al. 2021), L-inf and L2."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._utils import renamed_kwargs
from .base import Attack, Ball, l2_norms, per_sample, perturbation_norms
from .objectives import Objective
from .registry import register_attack

# The dual norm measures the gradient in FMN's first-order distance to the boundary.
_DUAL = {"linf": lambda g: g.flatten(1).abs().sum(1), "l2": l2_norms}


@register_attack
class FMN(Attack):
    """The smallest perturbation that fools the decision rule, by projected steps in a ball whose
    radius adapts: it shrinks while the iterate fools and grows while it does not.

    Starts from the clean input. Each step (one forward and backward pass) judges the iterate
    by the decision rule, keeps the smallest fooling perturbation so far, then updates each
    sample's radius ``r``: ``min(r (1 - gamma), best norm)`` if the iterate fools, else
    ``r (1 + gamma)`` once something fooled, or, before that, the iterate's norm plus the
    first-order distance to the boundary ``|objective| / ||grad||_dual``. It then steps by
    ``alpha`` along the L2-normalised gradient of the objective and projects onto the
    radius-``r`` ball and [0, 1]. ``alpha`` and ``gamma`` follow cosine annealing from their
    initial to their final values.

    The objective is a margin (default ``margin-ensemble``: the best other class's
    log-probability under Algorithm 2 minus the true one's, the logit margin of a plain
    classifier; ``vote-margin`` pulls every head, ``margin-public`` head 0 only), uncapped
    (``kappa = inf``) so that fooling iterates still get a gradient. Success is always judged
    by the decision rule, never by the objective's sign.

    After each call, :attr:`last_norms` ``[B]`` holds every sample's smallest fooling
    perturbation norm (0 for inputs the rule already gets wrong, ``inf`` where none was
    found): one run gives the whole accuracy-vs-eps curve through
    :func:`~auxsurgery.attacks.base.robust_accuracy_curve`. :meth:`minimum_norms` returns them.

    Returns each sample's smallest fooling point, else the clean input. With ``eps`` set, a
    sample whose smallest fooling norm exceeds ``eps`` is a failure at that budget, and its
    result is projected into the ball, as every attack's output is (``last_norms`` still
    reports the norm found). Deterministic: no random start.

    Args:
        steps: gradient steps.
        alpha_init, alpha_final: step length at the start and end (default final: ``alpha_init / 100``).
        gamma_init, gamma_final: relative change of the radius at the start and end.
        (others: see :class:`Attack`)
    """

    kind = "white-box"
    eps_optional = True

    @renamed_kwargs(dtype="precision")
    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "margin-ensemble",
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 100,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        rule: str = "vote",
        targeted: bool = False,
        kappa: float = math.inf,
        precision: str = "fp32",
    ):
        super().__init__(model, objective, eps, norm, rule, targeted=targeted, kappa=kappa, precision=precision)
        alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
        if steps < 1 or not alpha_init > 0 or not alpha_final > 0 or not 0 < gamma_final <= gamma_init < 1:
            raise ValueError(f"need steps >= 1, alpha_init, alpha_final > 0 and 0 < gamma_final <= gamma_init < 1; "
                             f"got steps={steps}, alpha {alpha_init}, {alpha_final}, gamma {gamma_init}, {gamma_final}")
        self.steps = steps
        self.alpha_init, self.alpha_final = alpha_init, alpha_final
        self.gamma_init, self.gamma_final = gamma_init, gamma_final
        self.last_norms: torch.Tensor | None = None

    def minimum_norms(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Run the attack; each sample's smallest fooling perturbation norm ``[B]`` (``inf``: none found)."""
        self(x, y)
        return self.last_norms

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        # The largest norm a perturbation inside [0, 1] can have: the radius never needs to exceed it.
        worst = perturbation_norms(torch.maximum(x, 1 - x), self.norm)
        radius = torch.full((batch,), math.inf, device=x.device, dtype=x.dtype)
        best_norm = torch.full_like(radius, math.inf)
        x_best, found = x, torch.zeros(batch, dtype=torch.bool, device=x.device)
        x_adv = x
        for i in range(self.steps):
            cosine = (1 + math.cos(math.pi * i / self.steps)) / 2
            alpha = self.alpha_final + (self.alpha_init - self.alpha_final) * cosine
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine

            loss, grad, logits = self.loss_and_grad(x_adv, y)
            fooled = self.fooled(logits, y, x_adv)
            norm = perturbation_norms(x_adv - x, self.norm)
            closer = fooled & (norm < best_norm)
            best_norm = torch.where(closer, norm, best_norm)
            x_best = torch.where(per_sample(closer, x), x_adv, x_best)
            found |= fooled

            to_boundary = loss.abs() / _DUAL[self.norm](grad).clamp_min(1e-12)
            radius = torch.where(fooled, torch.minimum(radius * (1 - gamma), best_norm),
                                 torch.where(found, radius * (1 + gamma), norm + to_boundary))
            radius = torch.minimum(radius, worst)

            step = grad / per_sample(l2_norms(grad).clamp_min(1e-12), grad)
            x_adv = Ball(x, radius, self.norm).project_(x_adv + alpha * step)
        self.last_norms = best_norm
        return x_best
