"""The Wilson score interval (`evaluation.intervals`) against published values and its defining properties."""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evaluation.intervals import format_accuracy, wilson_interval

# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven methods",
# Statistics in Medicine 17:857-872, Table II, method 3 (score method without continuity correction), 95%.
NEWCOMBE_1998 = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0000, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_1998)
def test_matches_newcombes_published_intervals(counts, expected):
    assert wilson_interval(*counts) == pytest.approx(expected, abs=5e-5)


@pytest.mark.skipif(importlib.util.find_spec("statsmodels") is None, reason="statsmodels is not installed")
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_matches_statsmodels(confidence):
    from statsmodels.stats.proportion import proportion_confint

    for successes, trials in [(0, 7), (3, 7), (44, 44), (120, 157), (250, 305)]:
        expected = proportion_confint(successes, trials, alpha=1 - confidence, method="wilson")
        assert wilson_interval(successes, trials, confidence) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_bounds_hold_the_estimate_and_mirror_at_one_half(counts):
    successes, trials = counts
    lower, upper = wilson_interval(successes, trials)
    assert 0.0 <= lower <= successes / trials <= upper <= 1.0
    assert lower < upper
    mirrored = wilson_interval(trials - successes, trials)  # failures instead of successes
    assert mirrored == pytest.approx((1 - upper, 1 - lower), abs=1e-12)


def test_the_demo_needs_about_250_questions_for_five_points_at_80_percent():
    """The sizing rule docs/benchmarks.md states for the demo's held-out set."""
    lower, upper = wilson_interval(200, 250)
    assert (upper - lower) / 2 <= 0.05
    lower, upper = wilson_interval(160, 200)
    assert (upper - lower) / 2 > 0.05


def test_format_and_bad_input():
    assert format_accuracy(81, 263) == "31% (26-37)"
    assert format_accuracy(0, 20) == "0% (0-16)"
    for successes, trials in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(successes, trials)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)
