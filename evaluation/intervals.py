"""Confidence intervals for an accuracy: the Wilson score interval of a binomial proportion.

An accuracy measured on n questions is k successes out of n trials. The Wilson interval (Wilson 1927; the one
Newcombe 1998 and Brown, Cai & DasGupta 2001 recommend) inverts the normal approximation of the score test, so
it stays inside [0, 1] and keeps close to its nominal coverage at the ends, where the demo's accuracies live
(near chance before training, near 100% after stage 2); the textbook "p ± z·sqrt(p(1-p)/n)" does neither.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (lower, upper) of the proportion `successes / trials`:

        centre = (p + z²/2n) / (1 + z²/n),   half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)

    with p = successes / trials and z the normal quantile of (1 + confidence) / 2 (1.96 for 95%).
    """
    if trials <= 0:
        raise ValueError(f"an interval needs at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be between 0 and the {trials} trials, got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p, n = successes / trials, trials
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / shrink
    # Mathematically the lower bound is 0 at k = 0 and the upper bound 1 at k = n; floating point can miss both.
    lower = 0.0 if successes == 0 else max(0.0, centre - half_width)
    upper = 1.0 if successes == trials else min(1.0, centre + half_width)
    return lower, upper


def format_accuracy(successes: int, trials: int, confidence: float = 0.95) -> str:
    """`82% (77-86)`: the accuracy and its Wilson interval, in whole percent."""
    lower, upper = wilson_interval(successes, trials, confidence)
    return f"{successes / trials:.0%} ({lower * 100:.0f}-{upper * 100:.0f})"
