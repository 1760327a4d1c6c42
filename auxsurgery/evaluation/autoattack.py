"""AutoAttack as a reference: its standard protocol on a differentiable surrogate of a decision rule,
every example re-judged by the model's real rule.

AutoAttack's standard protocol (Croce and Hein 2020, the original implementation's settings) runs, each
on the points still robust: APGD-CE (100 steps), APGD-T (100 steps, the top 9 target classes), FAB-T
(100 steps, 9 targets) and Square (5,000 queries). :func:`autoattack` builds it from torchattacks'
components with those settings. torchattacks' own ``AutoAttack(version="standard")`` runs the same four
attacks with 10 steps each for the gradient stages (its defaults); ``protocol="torchattacks"`` reproduces
that for comparison. The attacks see the model through ``surrogate`` (by default the ensemble's
log-probabilities, :meth:`AuxModel.as_classifier` ``("score")``, differentiable for every rule), and a
point counts as fooled only when the real decision rule is fooled: AutoAttack's "still robust" is
judged by that rule too.

torchattacks is a test extra, imported only here (``pip install 'auxsurgery[test]'``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attacks import is_adversarial
from ..model import as_aux_model

__all__ = ["PROTOCOLS", "AutoAttackResult", "autoattack"]

# stage -> gradient steps (APGD-CE, APGD-T, FAB-T) and Square's queries, per protocol
PROTOCOLS = {
    "standard": {"steps": 100, "square_queries": 5000},  # the original AutoAttack
    "torchattacks": {"steps": 10, "square_queries": 5000},  # torchattacks 3.5's AutoAttack defaults
}


@dataclass
class AutoAttackResult:
    """Per point: robust under the rule after every stage (``robust``), the examples, and timings."""

    rule: str
    protocol: str
    robust: torch.Tensor  # bool [N]: clean-correct and no stage fooled the rule
    x_adv: torch.Tensor
    seconds: float
    stages: list[dict] = field(default_factory=list)  # name, attacked, robust after, seconds

    @property
    def accuracy(self) -> float:
        return self.robust.float().mean().item()


def _stages(surrogate: nn.Module, eps: float, n_classes: int, seed: int, settings: dict) -> list[tuple[str, object]]:
    try:
        import torchattacks
    except ImportError:
        raise ImportError("the AutoAttack reference needs torchattacks: pip install 'auxsurgery[test]'") from None
    steps, queries = settings["steps"], settings["square_queries"]
    return [
        ("APGD-CE", torchattacks.APGD(surrogate, eps=eps, norm="Linf", steps=steps, n_restarts=1, loss="ce",
                                      seed=seed)),
        ("APGD-T", torchattacks.APGDT(surrogate, eps=eps, norm="Linf", steps=steps, n_restarts=1,
                                      n_classes=n_classes, seed=seed)),
        ("FAB-T", torchattacks.FAB(surrogate, eps=eps, norm="Linf", steps=steps, n_restarts=1, multi_targeted=True,
                                   n_classes=n_classes, seed=seed)),
        ("Square", torchattacks.Square(surrogate, eps=eps, norm="Linf", n_queries=queries, n_restarts=1,
                                       seed=seed)),
    ]


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, rule: str = "vote",
               protocol: str | dict = "standard", surrogate: nn.Module | None = None, seed: int = 0,
               batch_size: int = 256) -> AutoAttackResult:
    """Run AutoAttack's ``protocol`` against ``rule`` of ``model`` on ``(x, y)`` at L-inf ``eps``.

    Args:
        model: an AuxModel or a plain ``[B, C]`` classifier.
        surrogate: the ``[B, C]`` model the attacks differentiate (default: the ensemble's log-probabilities).
        protocol: ``standard`` (the original AutoAttack), ``torchattacks`` (its library defaults), or
            ``{"steps": ..., "square_queries": ...}`` (a reduced run, for tests).
    """
    if isinstance(protocol, dict):
        settings, protocol = protocol, "custom"
    elif protocol in PROTOCOLS:
        settings = PROTOCOLS[protocol]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    aux = as_aux_model(model).eval()
    surrogate = (surrogate or aux.as_classifier("score")).eval()
    device = next(aux.parameters()).device
    n_classes = aux(x[:1].to(device)).shape[-1]
    x_adv = x.clone()
    robust = torch.cat([~is_adversarial(aux, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device), rule)
                        for i in range(0, len(x), batch_size)]).cpu()
    began, stages = time.perf_counter(), []
    for name, attack in _stages(surrogate, eps, n_classes, seed, settings):
        todo = robust.nonzero().flatten()
        stage_began = time.perf_counter()
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            xb, yb = x[batch].to(device), y[batch].to(device)
            candidate = attack(xb, yb).detach()
            # torchattacks keeps a clean input where it found nothing; only a real fool of the rule counts.
            fooled = is_adversarial(aux, candidate, yb, rule).cpu()
            x_adv[batch[fooled]] = candidate[fooled].cpu()
            robust[batch[fooled]] = False
        stages.append({"name": name, "attacked": len(todo), "robust_after": int(robust.sum()),
                       "seconds": time.perf_counter() - stage_began})
    return AutoAttackResult(rule, protocol, robust, x_adv, time.perf_counter() - began, stages)
