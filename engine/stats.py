"""Statistics for comparisons: every estimate comes with its sample size and a 95% interval.

Bootstraps are seeded, so the same data always gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054

# A win rate between two variants is shown only from this many decisive votes (wins plus
# losses; ties and both-bad votes do not count) between them. Below it a point estimate
# means little (0% or 100% from one vote) and an even split's 95% Wilson interval is 0.70
# wide ([0.15, 0.85] from 2 of 4; at 5 votes about 0.65), so pages say "too few votes
# (n=…)" instead of a number. Counts of wins, losses, ties and both-bad votes are always shown.
MIN_DECISIVE_VOTES = 5


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def describe(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n})"

    def enough(self, minimum: int) -> bool:
        """Whether the estimate rests on at least ``minimum`` observations and has a value."""
        return self.n >= minimum and math.isfinite(self.value)


def bootstrap_mean(
    values: Sequence[float],
    clusters: Sequence[Hashable] | None = None,
    rounds: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Mean with a 95% percentile-bootstrap interval.

    With ``clusters`` (for example the prompt of each generation) whole clusters are
    resampled, because generations of one prompt are not independent of each other.
    """
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    rng = np.random.default_rng(seed)
    if clusters is None:
        draws = rng.integers(0, n, size=(rounds, n))
        means = data[draws].mean(axis=1)
    else:
        keys = list(dict.fromkeys(clusters))
        index = {k: i for i, k in enumerate(keys)}
        group = np.array([index[c] for c in clusters])
        sums = np.bincount(group, weights=data, minlength=len(keys))
        counts = np.bincount(group, minlength=len(keys)).astype(float)
        picks = rng.integers(0, len(keys), size=(rounds, len(keys)))
        means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(mean, float(low), float(high), n)


def wilson_interval(successes: float, n: int, z: float = Z95) -> Estimate:
    """Wilson score interval of a proportion (successes may be fractional: ties as halves)."""
    if n == 0:
        return Estimate(math.nan, 0.0, 1.0, 0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)
