"""Per-sample outcomes of an evaluation and their worst case over attacks.

An :class:`Outcome` records, for every sample, whether each decision rule and each head
still gets it right. Robustness against one attack is ``clean & adversarial`` (a sample
the model already gets wrong is not robust), and the worst case over several attacks is
the AND of their outcomes: a sample counts as robust only if *no* attack fooled it
(AutoAttack's rule), which can be far below the accuracy of the best single attack.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import frozen, head_weights
from ..model import as_stacked
from ..rules import default_rules, rule_predict

__all__ = ["SANITY_SUITE", "Outcome", "WorstCase", "applicable_rules", "evaluate", "worst_case"]

# The suite of the sanity probes (plans.sanity_probes): they check the attacks, so they are costed apart
# and stay out of the worst case's attacks; a point one of them breaks that every attack missed still
# counts as broken (:func:`worst_case`), so a probe never leaves a wrong number standing.
SANITY_SUITE = "sanity"


def applicable_rules(num_heads: int) -> tuple[str, ...]:
    """The decision rules every evaluation of a model with ``num_heads`` heads judges (the registered ``judged``
    ones it has: ``private`` needs an aux head); an attacked rule outside them is judged too."""
    return default_rules(num_heads)


@dataclass
class Outcome:
    """Which samples each decision rule and each head classifies correctly.

    Attributes:
        rules: rule name -> bool ``[N]``.
        heads: bool ``[H, N]``, head 0 the backbone's.
        losses: cross-entropy of each head ``[H, N]`` on the inputs judged (None once combined).
    """

    rules: dict[str, torch.Tensor]
    heads: torch.Tensor
    losses: torch.Tensor | None = None

    def __and__(self, other: "Outcome") -> "Outcome":
        return Outcome({r: c & other.rules[r] for r, c in self.rules.items()}, self.heads & other.heads)

    def accuracy(self, rule: str) -> float:
        """Fraction of samples ``rule`` gets right."""
        return self.rules[rule].float().mean().item()

    def head_accuracy(self) -> list[float]:
        """Fraction of samples each head gets right, head 0 first."""
        return self.heads.float().mean(1).tolist()

    def any_correct(self) -> torch.Tensor:
        """Samples that at least one rule or head gets right: the only ones worth attacking."""
        return torch.stack([*self.rules.values(), *self.heads]).any(0)

    def summary(self, head_names: Sequence[str]) -> dict:
        """Accuracies as JSON-able ``{"rules": {rule: acc}, "heads": {head: acc}}``."""
        return {"rules": {r: self.accuracy(r) for r in self.rules},
                "heads": dict(zip(head_names, self.head_accuracy()))}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rules: Sequence[str],
             batch_size: int = 256) -> Outcome:
    """Judge inputs ``x`` by the defended model itself: every rule and head, one forward per batch."""
    device = next(model.parameters()).device
    rule_hits: dict[str, list[torch.Tensor]] = {r: [] for r in rules}
    head_hits, losses = [], []
    with frozen(model):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            logits = as_stacked(model(xb)).float()
            alpha = head_weights(model, logits)
            head_hits.append((logits.argmax(-1) == yb).cpu())
            losses.append(F.cross_entropy(logits.flatten(0, 1), yb.repeat(len(logits)), reduction="none")
                          .view(len(logits), -1).cpu())
            for r in rules:
                rule_hits[r].append((rule_predict(logits, r, alpha) == yb).cpu())
    return Outcome({r: torch.cat(h) for r, h in rule_hits.items()}, torch.cat(head_hits, 1), torch.cat(losses, 1))


@dataclass
class WorstCase:
    """The per-sample worst case over every attack inside one threat model.

    Attributes:
        norm, eps: the threat model (attacks with a smaller or equal budget take part).
        attacks: names of the attacks that took part.
        outcome: robust samples per rule and head (clean-correct and never fooled).
        first_broken_by: rule -> per sample, ``"clean"`` if misclassified without attack,
            else the first attack that fooled it, else None (robust).
        missed: rule -> number of points a sanity probe broke that every attack left robust (they
            count as broken; more than zero means the attacks are weaker than a probe).
    """

    norm: str
    eps: float
    attacks: list[str]
    outcome: Outcome
    first_broken_by: dict[str, list[str | None]]
    missed: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self, head_names: Sequence[str]) -> dict:
        """The aggregate accuracies and attack list as JSON-able values."""
        return {"threat": {"norm": self.norm, "eps": self.eps}, "attacks": self.attacks,
                **self.outcome.summary(head_names), "missed_by_attacks_broken_by_probes": self.missed}


def worst_case(clean: Outcome, rows: Sequence, eps: float, norm: str = "linf") -> WorstCase:
    """AND the outcomes of every row whose threat model fits inside the ``norm`` ball of radius ``eps``.

    Rows are the suites' attack rows (anything with ``name``, ``suite``, ``threat`` and a robust
    ``outcome``); unbounded minimum-distance attacks (CW, Boundary) and larger budgets
    (sweeps) measure something else and stay out. Sanity probes (suite ``sanity``) stay out of
    the attacks too, but a point a probe within the budget breaks is never left robust: it
    counts as broken (by that probe) and ``missed`` counts it.
    """
    inside = [row for row in rows
              if row.threat["norm"] == norm and row.threat["eps"] is not None and row.threat["eps"] <= eps + 1e-9]
    attacks = [row for row in inside if row.suite != SANITY_SUITE]
    outcome = clean
    first: dict[str, list[str | None]] = {r: ["clean" if not ok else None for ok in c.tolist()]
                                          for r, c in clean.rules.items()}
    missed = {r: 0 for r in clean.rules}
    for row in attacks + [row for row in inside if row.suite == SANITY_SUITE]:
        for r, robust in row.outcome.rules.items():
            broken = (outcome.rules[r] & ~robust).nonzero().flatten().tolist()
            for i in broken:
                first[r][i] = row.name
            if row.suite == SANITY_SUITE:
                missed[r] += len(broken)
        outcome = outcome & row.outcome
    return WorstCase(norm, eps, [row.name for row in attacks], outcome, first, missed)
