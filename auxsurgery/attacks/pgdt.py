"""PGD-T: PGD aimed at each of the model's top-k other classes in turn (untargeted success)."""
from __future__ import annotations

from torch import nn

from .._utils import renamed_kwargs
from .objectives import Objective
from .pgd import PGD
from .registry import register_attack
from .targeted import TopKTargeted


@register_attack
class PGDT(TopKTargeted, PGD):
    """Targeted PGD over the top ``target_classes`` classes: :class:`~auxsurgery.attacks.apgdt.APGDT`
    with PGD's fixed step size instead of APGD's schedule.

    Per target (see :class:`~auxsurgery.attacks.targeted.TopKTargeted`), ``restarts`` PGD runs on
    the samples still robust; success is the decision rule leaving the true label.

    Args:
        target_classes: targets tried per sample (capped at the number of classes minus one).
        (others: see :class:`~auxsurgery.attacks.pgd.PGD`)
    """

    kind = "white-box"

    @renamed_kwargs(dtype="precision", n_target_classes="target_classes")
    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "dlr-t-ensemble",
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        target_classes: int = 9,
        rule: str = "vote",
        seed: int | None = None,
        kappa: float = 0.0,
        precision: str = "fp32",
    ):
        super().__init__(model, objective, eps, norm, steps, step_size, random_start, restarts, rule, seed,
                         kappa=kappa, precision=precision)
        self._init_targets(target_classes)
