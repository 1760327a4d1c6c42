"""What an evaluation measured: one row per attack, and the whole run's :class:`SuiteResult`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..attacks import Passes
from .heads_study import HeadsStudy, heads_study
from .judging import SANITY_SUITE, Outcome, WorstCase, worst_case
from .plans import HEADS_SUITE
from .presets import Budget, Preset, fmt_threat
from .sanity import Finding

__all__ = ["AttackRow", "SuiteResult", "protocol_lines", "stage_line"]


def _pct(accuracy: float) -> str:
    return f"{100 * accuracy:.1f}%"


def stage_line(cascade: dict, label: str) -> str:
    """``Cascade [vote], vote accuracy: clean 92.0% -> APGD-CE 41.0% -> APGD-T 38.5% -> Square 38.5%``
    (``label``: :meth:`SuiteResult.accuracy_label` of the cascade's rule)."""
    steps = [f"{cascade['start']} {_pct(cascade['start_accuracy'])}",
             *(f"{stage['attack']} {_pct(stage['accuracy'])}" for stage in cascade["stages"])]
    return f"{cascade['cascade']}, {label}: " + " -> ".join(steps)


def protocol_lines(settings: dict) -> list[str]:
    """How the evaluation drew a randomised model and where its gradient attacks crafted, one sentence each."""
    protocol, surrogate = settings.get("protocol"), settings.get("transfer_from")
    lines = []
    if protocol:
        kind = "randomised" if protocol["randomised"] else "deterministic"
        lines.append(f"judge: every verdict, clean included, is the majority of {protocol['judge_draws']} "
                     f"forward(s); each gradient step averages {protocol['eot']} draw(s) of the model (expectation "
                     f"over transformation); the model is {kind} (randomness check)")
    if surrogate:
        where = f", checkpoint {surrogate['checkpoint']}" if surrogate.get("checkpoint") else ""
        draws = (protocol or {}).get("surrogate_eot", 1)
        lines.append(f"transfer: the suites' gradient attacks crafted on the surrogate {surrogate['class']} "
                     f"(weights sha256 {surrogate['sha256'][:12]}{where}), {draws} draw(s) per step; every example "
                     "judged on the attacked model, which also answers the black-box attacks")
    return lines


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
        cascade: for a stage of a cascade, ``{"name": cascade, "rule": rule it judges by, "stage": attack}``.
        adversarial: ``(indices, examples)`` of the attacked samples, when the run kept its examples
            (``run_suite(keep_adversarial=True)``), else None.
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
    cascade: dict | None = None
    adversarial: tuple[torch.Tensor, torch.Tensor] | None = None

    def __repr__(self) -> str:
        accuracies = ", ".join(f"{r} {_pct(self.outcome.accuracy(r))}" for r in self.outcome.rules)
        return f"AttackRow({self.name!r}, {self.kind}, {fmt_threat(self.threat)}: {accuracies})"

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
            "cascade": self.cascade,
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
    def shown_rules(self) -> list[tuple[str, str]]:
        """``(rule, column label)`` of the tables: each attacked rule, or one ``accuracy`` column for a one-head
        (plain) model, whose rules all make the same decision."""
        if len(self.head_names) == 1:
            return [(self.rules[0], "accuracy")]
        return [(rule, rule) for rule in self.rules]

    def accuracy_label(self, rule: str) -> str:
        """``vote accuracy``; ``accuracy`` on a one-head model, whose rules are one decision."""
        return "accuracy" if len(self.head_names) == 1 else f"{rule} accuracy"

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
        """Per-sample worst case over every attack within the preset's threat model (its norm and eps)."""
        return worst_case(self.clean, self.rows, self.preset.eps, self.preset.norm)

    def cascade_stages(self) -> list[dict]:
        """Each cascade's accuracy under its rule before it and after each stage, as AutoAttack logs it.

        ``[{"cascade", "rule", "start", "start_accuracy", "stages": [{"attack", "accuracy"}, ...]}]``;
        ``start`` is ``clean``, or ``earlier attacks`` when attacks within the budget ran before the
        cascade (each stage only attacks the points that all of them left robust).
        """
        cascades: dict[str, dict] = {}
        for i, row in enumerate(self.rows):
            if row.cascade is None:
                continue
            name, rule = row.cascade["name"], row.cascade["rule"]
            if name not in cascades:
                before = worst_case(self.clean, self.rows[:i], self.preset.eps, self.preset.norm)
                cascades[name] = {"cascade": name, "rule": rule,
                                  "start": "earlier attacks" if before.attacks else "clean",
                                  "start_accuracy": before.outcome.accuracy(rule), "stages": []}
            cascades[name]["stages"].append({"attack": row.cascade["stage"], "accuracy": row.outcome.accuracy(rule)})
        return list(cascades.values())

    def adversarial_examples(self) -> dict[str, torch.Tensor]:
        """Per-point outcomes and, per rule, the example that first broke each broken point, as tensors.

        ``label [N]``; per rule ``clean/R``, ``robust/R`` (bool ``[N]``), ``broken_by/R`` (int ``[N]``: the
        index in :meth:`worst_case`'s ``breakers`` of the attack, or else the sanity probe, that first fooled
        the point, -1 if none did, -2 if the rule gets it wrong unattacked), ``indices/R`` and ``examples/R``
        (the broken points and their adversarial examples). Needs a run that kept its examples (``run_suite(keep_adversarial=True)``).
        """
        worst = self.worst_case()
        breakers, by_name = worst.breakers, {row.name: row for row in self.rows}
        missing = [name for name in breakers if by_name[name].adversarial is None]
        if missing:
            raise ValueError("this evaluation did not keep its adversarial examples (run_suite(keep_adversarial="
                             f"True), auxsurgery attack --save-adversarial); missing for {', '.join(missing)}")
        tensors = {"label": self.labels}
        for rule in self.eval_rules:
            first = worst.first_broken_by[rule]
            broken_by = torch.tensor([-2 if name == "clean" else -1 if name is None else breakers.index(name)
                                      for name in first])
            indices, examples = [], []
            for k, name in enumerate(breakers):
                points = (broken_by == k).nonzero().flatten()
                if len(points):
                    kept_indices, kept = by_name[name].adversarial
                    position = {int(i): j for j, i in enumerate(kept_indices.tolist())}
                    indices.append(points)
                    examples.append(kept[[position[int(i)] for i in points]])
            tensors[f"clean/{rule}"] = self.clean.rules[rule]
            tensors[f"robust/{rule}"] = worst.outcome.rules[rule]
            tensors[f"broken_by/{rule}"] = broken_by
            tensors[f"indices/{rule}"] = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
            shape = (0, *self.data_info.get("shape", ()))
            tensors[f"examples/{rule}"] = torch.cat(examples) if examples else torch.zeros(shape)
        return tensors

    def to_dict(self) -> dict:
        """The short summary (:meth:`summary`) as JSON-able values; ``results_document`` is the full record."""
        worst = self.worst_case()
        return {
            "n": self.n, "suites": list(self.suites), "rules": list(self.rules),
            "threat": {"norm": worst.norm, "eps": worst.eps},
            "budget": self.budget.name if self.budget else None,
            "clean": {r: self.clean.accuracy(r) for r in self.rules},
            "attacks": {row.name: {r: row.outcome.accuracy(r) for r in self.rules} for row in self.rows},
            "worst_case": {r: worst.outcome.accuracy(r) for r in self.rules},
            "worst_case_attacks": len(worst.attacks),
            "cascade_stages": self.cascade_stages(),
            "warnings": [f.message for f in self.warnings],
        }

    def summary(self) -> str:
        """A few lines: the threat model and budget, clean and worst-case accuracy per rule, each cascade's
        accuracy by stage, every attack's accuracy, and the sanity warnings."""
        worst = self.worst_case()

        def per_rule(outcome: Outcome) -> str:
            return ", ".join(f"{label} {_pct(outcome.accuracy(r))}" for r, label in self.shown_rules)

        threat = fmt_threat({"norm": worst.norm, "eps": worst.eps})
        lines = [f"{self.n} points, suites {', '.join(self.suites)}; {threat}; budget "
                 f"{self.budget.name if self.budget else '-'}",
                 f"clean: {per_rule(self.clean)}",
                 f"worst case ({len(worst.attacks)} attacks): {per_rule(worst.outcome)}"]
        protocol = self.settings.get("protocol") or {}
        if protocol.get("randomised") or protocol.get("judge_draws", 1) > 1 or self.settings.get("transfer_from"):
            lines += protocol_lines(self.settings)
        lines += [stage_line(cascade, self.accuracy_label(cascade["rule"])) for cascade in self.cascade_stages()]
        lines += ["attacks:"]
        lines += [f"  {row.name} ({fmt_threat(row.threat)}): {per_rule(row.outcome)}" for row in self.rows]
        lines += [f"warning ({f.check}): {f.message}" for f in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        worst = self.worst_case()
        return (f"SuiteResult(n={self.n}, suites={','.join(self.suites)}, attacks={len(self.rows)}, worst case: "
                + ", ".join(f"{r} {_pct(worst.outcome.accuracy(r))}" for r in self.rules) + ")")

    def heads_study(self) -> HeadsStudy | None:
        """Table VI, the transfer matrix and Fig. 5's loss ratio, if the heads suite ran."""
        rows = self.rows_of(HEADS_SUITE)
        return heads_study(rows, self.clean.head_accuracy(), self.head_names) if rows else None
