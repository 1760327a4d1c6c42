"""What an evaluation measured: one row per attack, and the whole run's :class:`SuiteResult`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..attacks import Passes
from .heads_study import HeadsStudy, heads_study
from .judging import SANITY_SUITE, Outcome, WorstCase, worst_case
from .plans import HEADS_SUITE
from .presets import Budget, Preset
from .sanity import Finding

__all__ = ["AttackRow", "SuiteResult"]


@dataclass
class AttackRow:
    """What one attack did, judged by the defended model.

    Attributes:
        outcome: robust samples per rule and head (clean-correct and not fooled).
        head_loss: mean cross-entropy of each head on the adversarial inputs ``[H]``.
        kind: ``white-box``, ``transfer``, ``score-based``, ``decision-based`` or ``cascade``.
        threat: ``{"norm", "eps"}`` of the attack (eps None: unbounded, minimum distance).
        passes: image-passes the attack spent (forward and backward, the judging forward included).
        attacked: samples the attack ran on (samples no rule or head gets right are skipped).
        perturbation: largest L-inf and median L2 distance of the attacked inputs from the clean ones.
    """

    name: str
    suite: str
    kind: str
    config: dict
    threat: dict
    series: tuple[str, str, float] | None
    outcome: Outcome
    head_loss: torch.Tensor
    seconds: float
    passes: Passes
    attacked: int
    perturbation: dict

    def to_dict(self, head_names: Sequence[str]) -> dict:
        """The row as JSON-able values."""
        return {
            "name": self.name, "suite": self.suite, "kind": self.kind, "config": self.config,
            "threat": self.threat, "series": list(self.series) if self.series else None,
            **self.outcome.summary(head_names),
            "head_loss": dict(zip(head_names, self.head_loss.tolist())),
            "seconds": self.seconds, "passes": self.passes.to_dict(), "attacked": self.attacked,
            "images_per_second": self.attacked / self.seconds if self.attacked and self.seconds > 0 else None,
            "perturbation": self.perturbation,
        }


@dataclass
class SuiteResult:
    """Everything one :func:`run_suite` call measured.

    Attributes:
        suites: suites run, in order.
        rules: decision rules attacked (rule-aware attacks run once per rule) and checked.
        eval_rules: every rule each input was judged under.
        head_names: the model's heads, ``public`` first.
        labels: the true labels ``[N]``.
        clean: outcome on the unattacked inputs.
        rows: one per attack (cascade: one per stage, cumulative).
        findings: sanity-check results.
        model_info, data_info, settings: descriptions for the report.
    """

    suites: list[str]
    rules: list[str]
    eval_rules: list[str]
    head_names: list[str]
    preset: Preset
    budget: Budget
    settings: dict
    model_info: dict
    data_info: dict
    labels: torch.Tensor
    clean: Outcome
    rows: list[AttackRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        """Number of samples evaluated."""
        return len(self.labels)

    @property
    def warnings(self) -> list[Finding]:
        """The sanity findings that are red flags."""
        return [f for f in self.findings if f.level == "warning"]

    def rows_of(self, suite: str) -> list[AttackRow]:
        """The rows of one suite, in the order they ran."""
        return [row for row in self.rows if row.suite == suite]

    def row(self, name: str) -> AttackRow:
        """The row called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no attack row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def passes(self, sanity: bool = False) -> Passes:
        """Image-passes of every attack row (``sanity``: of the sanity probes instead, costed apart)."""
        total = Passes()
        for row in self.rows:
            if (row.suite == SANITY_SUITE) == sanity:
                total = total + row.passes
        return total

    def worst_case(self) -> WorstCase:
        """Per-sample worst case over every attack within the preset's L-inf budget."""
        return worst_case(self.clean, self.rows, self.preset.eps, "linf")

    def heads_study(self) -> HeadsStudy | None:
        """Table VI, the transfer matrix and Fig. 5's loss ratio, if the heads suite ran."""
        rows = self.rows_of(HEADS_SUITE)
        return heads_study(rows, self.clean.head_accuracy(), self.head_names) if rows else None
