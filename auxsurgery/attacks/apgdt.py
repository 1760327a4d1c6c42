"""APGD-T: APGD aimed at each of the model's top-k other classes in turn (Croce & Hein 2020)."""
from __future__ import annotations

from torch import nn

from .._utils import renamed_kwargs
from .apgd import APGD
from .objectives import Objective
from .registry import register_attack
from .targeted import TopKTargeted


@register_attack
class APGDT(TopKTargeted, APGD):
    """Targeted APGD over the top ``target_classes`` classes, as AutoAttack's APGD-T.

    For each target class (ranked by the ensemble scores at the clean input, see
    :class:`~auxsurgery.attacks.targeted.TopKTargeted`) it runs APGD on the targeted objective,
    ``restarts`` times, on the samples still robust under the decision rule; success is the
    rule's prediction leaving the true label. Objectives: ``dlr-t-ensemble`` (default, the
    paper's targeted DLR on Algorithm 2's log-probabilities), ``vote-margin`` (every head
    pulled towards the target: the vote), ``ensemble`` (targeted CE of Algorithm 2), or any
    other name (built targeted) or callable ``(logits, target, alpha[, y_true]) -> [B]``.

    Cost: up to ``target_classes * restarts`` APGD runs, each ``steps + 1`` forward and
    backward passes on the samples still robust, plus one forward per run and one on the
    clean inputs (and, with ``target_candidates``, one backward per candidate there; with
    ``screen_steps``, instead a short run of ``screen_steps + 1`` passes and a forward per candidate; with
    ``close_steps``, one forward on the samples still robust and up to ``close_restarts`` runs of ``close_steps + 1``
    passes, and a forward each, on the close ones).

    Args:
        target_classes: targets tried per sample (AutoAttack: 9 for 10 classes; capped at
            the number of classes minus one).
        target_candidates: rank this many top classes by their linearised distance to the decision
            boundary and attack the ``target_classes`` nearest (MALT's targeting; one forward and
            ``target_candidates`` backward passes on the clean inputs). ``None``: the top classes by score.
        screen_steps: rank the candidates by trying them instead: a run of this many steps at each, then the
            full runs at the ``target_classes`` whose short runs reached the highest objective (see
            :mod:`~auxsurgery.attacks.targeted`). Needs ``target_candidates``.
        close_steps: one more run of this many steps, from a new random start, at the best target of the samples
            still robust whose objective there ended above ``-close_margin`` (in the objective's units; the
            targeted DLR's are scale-free, success near 0). 0: none.
        close_restarts: up to this many such runs, each on the close samples the earlier ones left robust.
        (others: see :class:`~auxsurgery.attacks.apgd.APGD`)
    """

    kind = "white-box"

    @renamed_kwargs(dtype="precision", n_target_classes="target_classes")
    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "dlr-t-ensemble",
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        target_classes: int = 9,
        rho: float = 0.75,
        rule: str = "vote",
        seed: int | None = None,
        kappa: float = 0.0,
        precision: str = "fp32",
        target_candidates: int | None = None,
        screen_steps: int | None = None,
        close_steps: int = 0,
        close_margin: float = 0.05,
        close_restarts: int = 1,
    ):
        super().__init__(model, objective, eps, norm, steps, restarts, rho, rule, seed, kappa, precision)
        self._init_targets(target_classes, target_candidates, screen_steps, close_steps, close_margin, close_restarts)
