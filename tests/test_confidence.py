"""Accuracy intervals: the Wilson interval against known values and its behaviour at the edges."""
import math

import pytest

from auxsurgery.evaluation.confidence import difference_interval, percent_with_interval, wilson_interval


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
