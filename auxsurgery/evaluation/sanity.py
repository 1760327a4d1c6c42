"""Sanity checks on an evaluation's own results (Carlini et al. 2019, "On Evaluating Adversarial Robustness").

A defence that looks robust only because the attacks failed to work is the classic
mistake; these checks look for its symptoms in the rows that ran:

* ``large-eps``: at eps = 1 (the whole pixel box) a working white-box attack drives
  accuracy to about 0; if it does not, the gradients are masked or the attack is broken.
* ``more-steps`` / ``larger-eps``: along a sweep, more iterations or a larger budget must
  not raise accuracy.
* ``masking``: a gradient-free (score- or decision-based) or transfer attack that beats
  every white-box attack at the same budget means the white-box gradients are useless.
* ``baseline``: the static suite attacks the backbone alone; it is not an evaluation.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["Finding", "LARGE_EPS", "LARGE_EPS_MAX_ACCURACY", "sanity_checks"]

LARGE_EPS = 1.0
LARGE_EPS_MAX_ACCURACY = 0.05
TOLERANCE = 0.02  # accuracy differences smaller than this (or than 2 samples) are noise
GRADIENT_FREE = ("transfer", "score-based", "decision-based")
_AXIS_WORDS = {"steps": "more-steps", "eps": "larger-eps"}


@dataclass(frozen=True)
class Finding:
    """One result of a sanity check: ``level`` is ``warning`` (a red flag) or ``note``."""

    check: str
    level: str
    message: str

    def to_dict(self) -> dict:
        """The finding as JSON-able values."""
        return asdict(self)


def _pct(accuracy: float) -> str:
    return f"{100 * accuracy:.1f}%"


def _linf_eps(row) -> float | None:
    return row.threat["eps"] if row.threat["norm"] == "linf" else None


def _baseline(rows: Sequence) -> list[Finding]:
    if not any(row.suite == "static" for row in rows):
        return []
    return [Finding("baseline", "note", "the static suite is a baseline (Table II): its attacks are crafted on "
                    "the public backbone, blind to the aux heads; robustness is measured by the adaptive and "
                    "strong suites")]


def _large_eps(rows: Sequence, rules: Sequence[str]) -> list[Finding]:
    probes = [row for row in rows if row.kind == "white-box" and (_linf_eps(row) or 0) >= LARGE_EPS - 1e-9]
    if not probes:
        return [Finding("large-eps", "note", f"not checked: no white-box attack ran at eps={LARGE_EPS:g}")]
    findings = []
    for rule in rules:
        best = min(probes, key=lambda row: row.outcome.accuracy(rule))
        accuracy = best.outcome.accuracy(rule)
        if accuracy > LARGE_EPS_MAX_ACCURACY:
            findings.append(Finding("large-eps", "warning", (
                f"[{rule}] accuracy stays at {_pct(accuracy)} under {best.name} at eps={LARGE_EPS:g}, where any "
                f"image can be reached: gradient masking or a broken attack; white-box results are not trustworthy")))
    return findings


def _monotone(rows: Sequence, rules: Sequence[str], tolerance: float) -> list[Finding]:
    series = defaultdict(list)
    for row in rows:
        if row.series is not None and row.series[1] in _AXIS_WORDS:
            series[row.series[:2]].append(row)
    findings = []
    for (name, axis), members in series.items():
        members = sorted(members, key=lambda row: row.series[2])
        for rule in rules:
            for low, high in zip(members, members[1:]):
                rise = high.outcome.accuracy(rule) - low.outcome.accuracy(rule)
                if rise > tolerance:
                    findings.append(Finding(_AXIS_WORDS[axis], "warning", (
                        f"[{rule}] {name}: accuracy rises from {_pct(low.outcome.accuracy(rule))} "
                        f"({axis}={low.series[2]:g}) to {_pct(high.outcome.accuracy(rule))} "
                        f"({axis}={high.series[2]:g}); more iterations or budget must never leave more accuracy: the "
                        f"attack is not converging (step size or iterations too small) or the gradients are masked; "
                        f"trust the lower number")))
    return findings


def _masking(rows: Sequence, rules: Sequence[str], tolerance: float) -> list[Finding]:
    by_eps = defaultdict(lambda: ([], []))
    for row in rows:
        eps = _linf_eps(row)
        if eps is not None and row.kind in ("white-box", *GRADIENT_FREE):
            by_eps[round(eps, 9)][row.kind != "white-box"].append(row)
    findings = []
    for eps, (white, blind) in sorted(by_eps.items()):
        if not white or not blind:
            continue
        white_case = white[0].outcome
        for row in white[1:]:
            white_case = white_case & row.outcome
        for rule in rules:
            best = min(blind, key=lambda row: row.outcome.accuracy(rule))
            if best.outcome.accuracy(rule) < white_case.accuracy(rule) - tolerance:
                findings.append(Finding("masking", "warning", (
                    f"[{rule}] {best.name} ({best.kind}) leaves {_pct(best.outcome.accuracy(rule))} at eps={eps:.4g}, "
                    f"below the {_pct(white_case.accuracy(rule))} of every white-box attack together: gradients are "
                    f"masked or the white-box attacks are weak; the white-box numbers overstate robustness")))
    return findings


def sanity_checks(rows: Sequence, rules: Sequence[str], n: int, tolerance: float = TOLERANCE) -> list[Finding]:
    """Run every check over an evaluation's attack rows, judged under each of ``rules``.

    Args:
        rows: attack rows (``name``, ``suite``, ``kind``, ``threat``, ``series``, ``outcome``).
        rules: decision rules to check under.
        n: samples evaluated; differences of two samples or fewer are never flagged.
        tolerance: accuracy difference below which monotonicity and masking checks stay quiet.
    """
    # 2.5 samples: a difference of exactly two samples must not flag through rounding.
    tolerance = max(tolerance, 2.5 / max(n, 1))
    return [*_baseline(rows), *_large_eps(rows, rules), *_monotone(rows, rules, tolerance),
            *_masking(rows, rules, tolerance)]
