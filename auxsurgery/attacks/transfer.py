"""Transfer attack: craft on a surrogate model, evaluate on the target (black-box threat model)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Attack
from .registry import register_attack


@register_attack
class Transfer(Attack):
    """Adversarial examples crafted by ``attack`` on its own (surrogate) model, scored on ``model``.

    By default the target is never queried while crafting; :meth:`success` (and the shared
    :func:`~auxsurgery.attacks.base.is_adversarial`) judge the examples by the target's
    decision ``rule``. With ``query_target`` the crafting attack asks the target's decision (the
    majority of its ``judge_draws`` forwards) wherever it asks whether a sample is fooled: it climbs the
    surrogate's gradient until the target itself is fooled, not only the surrogate, and keeps the
    surrogate's highest objective where the target holds. The budget, norm and targeting are the
    crafting attack's.
    Example: ``Transfer(aux_model, PGD(other_net, eps=8/255))``, or the paper's static
    adversary ``Transfer(aux_model, PGD(aux_model.public_model()))``.
    """

    kind = "transfer"
    eps_optional = True

    def __init__(self, model: nn.Module, attack: Attack, rule: str = "vote", query_target: bool = False):
        super().__init__(model, objective=None, eps=attack.eps, norm=attack.norm, rule=rule, seed=attack.seed,
                         targeted=attack.targeted)
        self.attack = attack
        if query_target:
            attack.judge = model

    def __repr__(self) -> str:
        return f"Transfer({self.attack!r}, rule={self.rule!r})"

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The seed is this attack's: whoever reseeds it per batch (the evaluation runner) reseeds the crafting.
        self.attack.seed = self.seed
        return self.attack(x, y)
