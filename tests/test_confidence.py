"""Accuracy intervals: the Wilson interval against known values and its behaviour at the edges."""
import math

import pytest

from auxsurgery.evaluation.confidence import (
    difference_interval,
    paired_difference_interval,
    percent_with_interval,
    points_with_interval,
    wilson_interval,
)


def test_wilson_matches_known_values():
    # Reference values from the closed form (Wilson 1927), e.g. statsmodels' proportion_confint(method="wilson").
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.40383, abs=1e-5) and high == pytest.approx(0.59617, abs=1e-5)
    low, high = wilson_interval(0.0, 1000)
    assert low == 0.0 and high == pytest.approx(0.003827, abs=1e-6)  # 0 of 1,000 is not proof of 0%


def test_wilson_stays_in_the_unit_interval_and_contains_p():
    for n in (1, 10, 1000):
        for k in range(0, n + 1, max(1, n // 10)):
            low, high = wilson_interval(k / n, n)
            assert 0.0 <= low <= k / n <= high <= 1.0


def test_no_samples_give_nan():
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0))
    assert math.isnan(difference_interval(0.5, 0.4, 0)["half_width"])


def test_difference_and_formatting():
    d = difference_interval(0.6, 0.5, 100)
    assert d["difference"] == pytest.approx(0.1)
    assert d["half_width"] == pytest.approx(1.96 * math.sqrt((0.24 + 0.25) / 100))
    assert percent_with_interval(0.5, 100) == "50.0 (40.4-59.6)"
    assert points_with_interval({"difference": 0.018, "low": 0.001, "high": 0.035}) == "+1.8 (+0.1 to +3.5)"


def test_paired_difference_counts_the_disagreements_and_matches_agresti_min():
    # 100 points: 30 robust under both, 10 only under the new model, 2 only under the old one.
    new = [True] * 30 + [True] * 10 + [False] * 2 + [False] * 58
    old = [True] * 30 + [False] * 10 + [True] * 2 + [False] * 58
    d = paired_difference_interval(new, old)
    assert (d["gained"], d["lost"]) == (10, 2) and d["difference"] == pytest.approx(0.08)
    # Agresti and Min (2005) by hand: centre (b - c) / (n + 2), variance ((b + c + 1) / (n + 2) - centre^2) / (n + 2)
    centre = 8 / 102
    half = 1.96 * math.sqrt((13 / 102 - centre ** 2) / 102)
    assert (d["low"], d["high"]) == (pytest.approx(centre - half), pytest.approx(centre + half))
    # The same accuracies as independent samples: a far wider interval, which here contains 0.
    independent = difference_interval(0.40, 0.32, 100)
    assert independent["low"] < 0 < d["low"] and d["half_width"] < independent["half_width"]


def test_paired_difference_with_no_disagreement_is_still_an_interval_and_refuses_unpaired_data():
    same = [True, False] * 50
    d = paired_difference_interval(same, same)
    assert d["difference"] == 0 and d["low"] < 0 < d["high"]
    with pytest.raises(ValueError, match="same points"):
        paired_difference_interval([True, False], [True])
