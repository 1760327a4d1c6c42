"""FGSM: one gradient-sign step of size eps (Goodfellow et al. 2015)."""
from __future__ import annotations

from torch import nn

from .._utils import renamed_kwargs
from .objectives import Objective
from .pgd import PGD
from .registry import register_attack


@register_attack
class FGSM(PGD):
    """The fast gradient sign method: ``x + eps * sign(grad)``, clipped to [0, 1].

    One PGD step of length eps from the clean input; with ``norm="l2"`` it is the fast
    gradient method (a step along the normalised gradient). With ``objective="joint"``
    on an AuxModel it is the paper's Adp-FGSM. Every input takes its step, including one
    that already fools the decision rule: as in the paper, one set of examples is judged
    by every rule and head.
    """

    kind = "white-box"

    @renamed_kwargs(dtype="precision")
    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "public",
        eps: float = 8 / 255,
        norm: str = "linf",
        rule: str = "vote",
        targeted: bool = False,
        kappa: float = 0.0,
        precision: str = "fp32",
    ):
        super().__init__(model, objective, eps, norm, steps=1, step_size=eps, random_start=False,
                         rule=rule, targeted=targeted, kappa=kappa, precision=precision, early_stop=False)
