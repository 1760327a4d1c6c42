"""AutoAttack as a reference: its standard protocol on a differentiable surrogate of a decision rule,
every example re-judged by the model's real rule.

AutoAttack's standard protocol (Croce and Hein 2020, the original implementation's settings) runs, each
on the points still robust: APGD-CE (100 steps), APGD-T (100 steps, the top 9 target classes), FAB-T
(100 steps, 9 targets) and Square (5,000 queries). :func:`autoattack` builds it from torchattacks'
components with those settings. torchattacks' own ``AutoAttack(version="standard")`` runs the same four
attacks with 10 steps each for the gradient stages (its defaults); ``protocol="torchattacks"`` reproduces
that for comparison. The attacks see the model through ``surrogate`` (by default the ensemble's
log-probabilities, :meth:`AuxModel.as_classifier` ``("score")``, differentiable for every rule; a plain
one-head model through its own logits), and a point counts as fooled only when the real decision rule is
fooled: AutoAttack's "still robust" is judged by that rule too. AutoAttack's attacks leave alone every
point their view already misclassifies; a point the rule gets right but the view gets wrong (the vote
right, the score wrong) is therefore attacked again through the logits of a head that gets it right
(one exists where a majority votes for the true class), so no point escapes unattacked.

Its cost is counted as the suite's is (:class:`~auxsurgery.attacks.PassCounter` around every view of the
model): image-passes per stage beside the wall time.

torchattacks is a test extra, imported only here (``pip install 'auxsurgery[test]'``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attacks import PassCounter, Passes, is_adversarial
from ..model import as_aux_model, as_stacked

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
    stages: list[dict] = field(default_factory=list)  # name, view, attacked, robust after, seconds, passes
    passes: Passes = field(default_factory=Passes)  # every stage's and the judging's image-passes
    settings: dict = field(default_factory=dict)  # the protocol's steps, queries and targets

    @property
    def accuracy(self) -> float:
        return self.robust.float().mean().item()


# AutoAttack's targeted stages aim at 9 classes whatever the class count (fewer only where there are not
# 10 classes); torchattacks reads the target count as ``n_classes - 1``.
TARGETS = 9


class _HeadView(nn.Module):
    """One head's logits of an AuxModel, as a ``[B, C]`` classifier."""

    def __init__(self, aux: nn.Module, head: int):
        super().__init__()
        self.aux, self.head = aux, head
        self.training = aux.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_stacked(self.aux(x))[self.head]


# Our norms as torchattacks names them.
_TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}


def _stages(surrogate: nn.Module, eps: float, n_classes: int, seed: int, settings: dict,
            norm: str) -> list[tuple[str, object]]:
    try:
        import torchattacks
    except ImportError:
        raise ImportError("the AutoAttack reference needs torchattacks: pip install 'auxsurgery[test]'") from None
    steps, queries = settings["steps"], settings["square_queries"]
    n_classes, norm = min(n_classes, TARGETS + 1), _TORCHATTACKS_NORMS[norm]
    return [
        ("APGD-CE", torchattacks.APGD(surrogate, eps=eps, norm=norm, steps=steps, n_restarts=1, loss="ce",
                                      seed=seed)),
        ("APGD-T", torchattacks.APGDT(surrogate, eps=eps, norm=norm, steps=steps, n_restarts=1,
                                      n_classes=n_classes, seed=seed)),
        ("FAB-T", torchattacks.FAB(surrogate, eps=eps, norm=norm, steps=steps, n_restarts=1, multi_targeted=True,
                                   n_classes=n_classes, seed=seed)),
        ("Square", torchattacks.Square(surrogate, eps=eps, norm=norm, n_queries=queries, n_restarts=1,
                                       seed=seed)),
    ]


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, rule: str = "vote",
               protocol: str | dict = "standard", surrogate: nn.Module | None = None, seed: int = 0,
               batch_size: int = 256, norm: str = "linf") -> AutoAttackResult:
    """Run AutoAttack's ``protocol`` against ``rule`` of ``model`` on ``(x, y)`` within the ``norm`` ball of
    radius ``eps`` (``linf`` or ``l2``: AutoAttack's standard version runs the same four attacks in either).

    Args:
        model: an AuxModel or a plain ``[B, C]`` classifier.
        surrogate: the ``[B, C]`` model the attacks differentiate (default: the ensemble's log-probabilities).
        protocol: ``standard`` (the original AutoAttack), ``torchattacks`` (its library defaults), or
            ``{"steps": ..., "square_queries": ...}`` (a reduced run, for tests).
    """
    if norm not in _TORCHATTACKS_NORMS:
        raise ValueError(f"unknown norm {norm!r}; AutoAttack runs in {', '.join(_TORCHATTACKS_NORMS)}")
    if isinstance(protocol, dict):
        settings, protocol = protocol, "custom"
    elif protocol in PROTOCOLS:
        settings = PROTOCOLS[protocol]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    aux = as_aux_model(model).eval()
    one_head = len(aux.head_names) == 1
    surrogate = (surrogate or (aux.public_model() if one_head else aux.as_classifier("score"))).eval()
    device = next(aux.parameters()).device
    n_classes = aux(x[:1].to(device)).shape[-1]
    views = [("logits" if one_head else "surrogate", surrogate)]
    views += [] if one_head else [(f"head {name}", _HeadView(aux, k)) for k, name in enumerate(aux.head_names)]
    counted = [aux, aux.public_model(), *(view for _, view in views)]
    x_adv = x.clone()
    began = time.perf_counter()
    with PassCounter(*counted) as judging:
        robust = torch.cat([~is_adversarial(aux, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device),
                                            rule) for i in range(0, len(x), batch_size)]).cpu()
    stages, total = [], judging
    unseen = robust.clone()  # robust points no view has attacked yet (a view skips what it misclassifies)
    for view_name, view in views:
        with torch.no_grad(), PassCounter(*counted) as seeing:
            sees = torch.cat([view(x[i:i + batch_size].to(device)).argmax(-1).cpu() == y[i:i + batch_size]
                              for i in range(0, len(x), batch_size)])
        total = total + seeing
        aimed = unseen & sees
        unseen &= ~sees
        if view_name.startswith("head") and not aimed.any():
            continue
        for name, attack in _stages(view, eps, n_classes, seed, settings, norm):
            todo = (robust & aimed).nonzero().flatten()
            stage_began = time.perf_counter()
            with PassCounter(*counted) as passes:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start:start + batch_size]
                    xb, yb = x[batch].to(device), y[batch].to(device)
                    candidate = attack(xb, yb).detach()
                    # torchattacks keeps a clean input where it found nothing; only a real fool of the rule counts.
                    fooled = is_adversarial(aux, candidate, yb, rule).cpu()
                    x_adv[batch[fooled]] = candidate[fooled].cpu()
                    robust[batch[fooled]] = False
            total = total + passes
            stages.append({"name": name, "view": view_name, "attacked": len(todo), "robust_after": int(robust.sum()),
                           "seconds": time.perf_counter() - stage_began, "passes": passes.to_dict()})
    chosen = {**settings, "norm": norm, "target_classes": min(n_classes, TARGETS + 1) - 1,
              "unattacked": int((robust & unseen).sum())}
    return AutoAttackResult(rule, protocol, robust, x_adv, time.perf_counter() - began, stages, total, chosen)
