"""How sure an accuracy is: 95% intervals for accuracies measured on a finite sample.

Robust accuracies sit near 0% or 100% more often than not, where the textbook
``p +- 1.96 sqrt(p(1-p)/n)`` collapses to a zero-width interval (0 of 1,000 points robust
is not proof of 0%). The Wilson score interval stays honest there and is asymmetric.
"""
from __future__ import annotations

import math

__all__ = ["Z95", "difference_interval", "paired_difference_interval", "percent_with_interval", "points_with_interval",
           "wilson_interval"]

Z95 = 1.96  # the two-sided 95% normal quantile


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of an accuracy ``p`` measured on ``n`` samples."""
    if n <= 0:
        return math.nan, math.nan
    spread = z * z / n
    centre = (p + spread / 2) / (1 + spread)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + spread / (4 * n)) / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(p_new: float, p_old: float, n: int, z: float = Z95) -> dict:
    """``p_new - p_old`` with a 95% interval, the two treated as independent samples of size ``n``
    (conservative for accuracies measured on the same points, which are positively correlated)."""
    half = z * math.sqrt((p_new * (1 - p_new) + p_old * (1 - p_old)) / n) if n else math.nan
    diff = p_new - p_old
    return {"difference": diff, "half_width": half, "low": diff - half, "high": diff + half}


def paired_difference_interval(new, old, z: float = Z95) -> dict:
    """``mean(new) - mean(old)`` of two per-point outcomes on the same points (sequences of bools: robust or
    correct per point), with a 95% interval.

    Two models attacked on the same points agree on most of them, and only the points where they disagree
    carry the difference: ``gained`` (right under ``new`` only) and ``lost`` (right under ``old`` only). The
    interval is Agresti and Min's (2005): Wald's on the paired table with 1/2 added to each of its four cells,
    which keeps its coverage when few points disagree. It is far narrower than :func:`difference_interval`'s.
    """
    new, old = [bool(v) for v in new], [bool(v) for v in old]
    if len(new) != len(old) or not new:
        raise ValueError(f"a paired difference needs two outcomes on the same points, got {len(new)} and {len(old)}")
    n = len(new)
    gained = sum(a and not b for a, b in zip(new, old))
    lost = sum(b and not a for a, b in zip(new, old))
    centre = (gained - lost) / (n + 2)
    half = z * math.sqrt(max((gained + lost + 1) / (n + 2) - centre * centre, 0.0) / (n + 2))
    return {"difference": (gained - lost) / n, "half_width": half, "low": centre - half, "high": centre + half,
            "gained": gained, "lost": lost}


def percent_with_interval(p: float, n: int, digits: int = 1) -> str:
    """``p`` in % with its Wilson interval: ``"47.3 (44.2-50.4)"``."""
    low, high = wilson_interval(p, n)
    return f"{100 * p:.{digits}f} ({100 * low:.{digits}f}-{100 * high:.{digits}f})"


def points_with_interval(difference: dict) -> str:
    """A difference of accuracies (from :func:`difference_interval` or :func:`paired_difference_interval`) in
    percentage points with its interval: ``"+1.8 (+0.1 to +3.5)"``."""
    return (f"{100 * difference['difference']:+.1f} ({100 * difference['low']:+.1f} to "
            f"{100 * difference['high']:+.1f})")
