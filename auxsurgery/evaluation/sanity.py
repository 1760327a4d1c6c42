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

Before any attack, :func:`model_checks` probes the model itself (AutoAttack's and Carlini's checks):

* ``zero-gradient``: inputs whose gradient of an attack surrogate is exactly zero give gradient
  attacks nothing to climb (saturated or quantised outputs): their robustness is not measured.
* ``randomness``: two forward passes on the same inputs differ, so the defence is randomised and
  every attack needs expectation over transformation (EOT); these attacks do not average.
* ``non-finite``: NaN or infinite logits break both the attacks and the decision rules.

During a strong cascade, indicators of attack failure (Pintor et al. 2022, arXiv 2106.09947) are read on
the points the gradient stages leave robust: ``blind_gradients`` (zero or non-finite), a loss no
gradient stage raised, a black-box stage that breaks points the gradient stages missed. Where one
fires, the black-box stage escalates (``indicators`` finding; see the runner).

After the attacks, ``bounds`` reports each threat model's largest perturbation and the pixel range
of every example, and warns if any lies outside its ball or the [0, 1] box.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from ..attacks import get_objective
from ..attacks.base import frozen, head_weights
from ..model import as_stacked
from ..rules import rule_predict

__all__ = ["Finding", "LARGE_EPS", "LARGE_EPS_MAX_ACCURACY", "blind_gradients", "model_checks", "probe_findings",
           "sanity_checks"]

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


def _bounds(rows: Sequence) -> list[Finding]:
    findings, largest = [], {}
    for row in rows:
        p, eps = row.perturbation, row.threat["eps"]
        if not row.attacked:
            continue
        size = p["linf_max"] if row.threat["norm"] == "linf" else p["l2_max"]
        if row.threat["norm"] not in largest or size > largest[row.threat["norm"]][0]:
            largest[row.threat["norm"]] = (size, row.name)
        # float32 rounding of x + delta may land one ulp past the ball (the attacks pull it back to x's side)
        if (eps is not None and size > eps + 1e-6) or p["pixel_min"] < 0 or p["pixel_max"] > 1:
            findings.append(Finding("bounds", "warning", (
                f"{row.name}: examples leave the threat model ({row.threat['norm']} size {size:.6g} for eps "
                f"{eps}, pixels in [{p['pixel_min']:.6g}, {p['pixel_max']:.6g}]): a bug in the attack")))
    summary = "; ".join(f"largest {norm} perturbation {size:.6g} ({name})" for norm, (size, name) in largest.items())
    return findings + ([Finding("bounds", "note", summary + "; every example's pixels lie in [0, 1]")]
                       if summary and not findings else [])


@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return as_stacked(model(x)).float()


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: str):
    """``(logits, d objective / d x)`` on one batch, the model frozen by the caller."""
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = as_stacked(model(xg))
        loss = get_objective(objective)(logits, y, head_weights(model, logits))
        (grad,) = torch.autograd.grad(loss.sum(), xg)
    return logits.detach(), grad


def blind_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: str,
                    batch_size: int = 128) -> torch.Tensor:
    """Which points give gradient attacks nothing to climb: the gradient of ``objective`` at ``x`` is exactly
    zero or not finite (bool ``[N]``, on the CPU). One forward and one backward pass per point."""
    device = next(model.parameters()).device
    blind = []
    with frozen(model):
        for start in range(0, len(x), batch_size):
            _, grad = _input_gradient(model, x[start:start + batch_size].to(device),
                                      y[start:start + batch_size].to(device), objective)
            size = grad.flatten(1).abs().amax(1)
            blind.append(((size == 0) | ~torch.isfinite(size)).cpu())
    return torch.cat(blind) if blind else torch.zeros(0, dtype=torch.bool)


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rules: Sequence[str],
                 surrogates: dict[str, str], batch_size: int = 128) -> list[Finding]:
    """Probe the model on (a batch of) the clean inputs for zero gradients, randomness and non-finite logits.

    Args:
        surrogates: rule -> the objective gradient attacks climb for it (e.g. ``vote-margin``).
    """
    device = next(model.parameters()).device
    xb, yb = x[:batch_size].to(device), y[:batch_size].to(device)
    findings = []
    with frozen(model):
        first, second = _forward(model, xb), _forward(model, xb)
        if not torch.isfinite(first).all():
            findings.append(Finding("non-finite", "warning", (
                f"{(~torch.isfinite(first)).any(-1).any(0).sum().item()} of {len(xb)} clean inputs give NaN or "
                "infinite logits: attacks and decision rules are undefined there")))
        # NaN never equals itself: NaN logits (NaN weights) in the same places are no sign of randomness.
        if not torch.allclose(first, second, rtol=0.0, atol=0.0, equal_nan=True):
            findings.append(Finding("randomness", "warning", (
                f"two forward passes on the same inputs differ (by up to {(first - second).abs().max().item():.3g}): "
                "the model is randomised; gradient attacks need EOT (averaging over the randomness), which these "
                "attacks do not do, so their numbers overstate robustness")))
        for rule in rules:
            logits, grad = _input_gradient(model, xb, yb, surrogates[rule])
            # Only inputs the rule gets right matter: the others are not robust anyway.
            correct = rule_predict(logits, rule, head_weights(model, logits)) == yb
            zero = ((grad.flatten(1).abs().amax(1) == 0) & correct).sum().item()
            if zero > max(2, 0.01 * correct.sum().item()):
                findings.append(Finding("zero-gradient", "warning", (
                    f"[{rule}] {zero} of {correct.sum().item()} correctly classified inputs have an exactly zero "
                    f"gradient of "
                    f"{surrogates[rule]}: gradient attacks cannot move them (saturated or masked gradients); "
                    "trust the gradient-free attacks' numbers there")))
    return findings


def probe_findings(missed: dict[str, int]) -> list[Finding]:
    """A warning per rule where a sanity probe broke points that every attack left robust
    (:attr:`~.judging.WorstCase.missed`: they count as broken in the worst case)."""
    return [Finding("probe-beats-attacks", "warning", (
        f"[{rule}] a sanity probe broke {count} point(s) that every attack left robust: the attacks are weaker "
        "than a probe here; those points count as broken in the worst case"))
        for rule, count in missed.items() if count]


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
            *_masking(rows, rules, tolerance), *_bounds(rows)]
