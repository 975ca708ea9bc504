"""How many decisive votes or prompts a fixed-sample test needs to detect a given effect.

These are the classical sample sizes for a team that looks once, at the end. Compare decides
with the always-valid tests of :mod:`engine.sequential`, which may be looked at after every
vote and so need more data for the same power; :mod:`engine.sequential` has their sample
sizes, and these stay as the familiar reference figure.

Decisive votes (wins against losses; ties and both-bad votes carry no information about
which side is better) for a two-sided test of "win rate = 1/2", normal approximation
(e.g. Chow, Shao and Wang, *Sample Size Calculations in Clinical Research*, one-sample
proportion):

    n = ( z(1 - alpha/2) sqrt(p0 (1 - p0)) + z(power) sqrt(p1 (1 - p1)) )^2 / (p1 - p0)^2,  p0 = 1/2

(60% against 50% at alpha 0.05 and 80% power: 194, the "about 196" of the cruder
(z + z)^2 / (4 delta^2), which uses the null's variance on both sides).

Prompts for the paired comparison (a one-sample t-test on the per-prompt mean differences,
whose standard deviation is ``sd``), the smallest n that satisfies (the degrees of freedom depend on n):

    n >= ( (t(1 - alpha/2; n - 1) + t(power; n - 1)) sd / difference )^2

(difference = sd / 2 at alpha 0.05 and 80% power: 34 prompts, as G*Power's paired t-test gives).
"""

from __future__ import annotations

import math

from scipy import special

from engine.errors import SteerLabError


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a two-sided false-positive rate strictly between 0 and 0.5; one sentence otherwise."""
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 0.5):
        raise SteerLabError(
            f"The significance level alpha {alpha!r} is not strictly between 0 and 0.5: use a value like 0.05."
        )
    return float(alpha)


def check_power(power: float) -> float:
    """``power`` if it is strictly between 0.5 and 1; one sentence otherwise."""
    if not (isinstance(power, int | float) and 0.5 < power < 1.0):
        raise SteerLabError(f"The power {power!r} is not strictly between 0.5 and 1: use a value like 0.8.")
    return float(power)


# Detecting a win rate within this distance of 50% takes tens of thousands of decisive votes
# (0.51: about 20,000 for one look, more for the always-valid test): no team rates that many,
# so such an effect is refused as a setting rather than computed for minutes.
MIN_WIN_RATE_DISTANCE = 0.01


def check_win_rate(win_rate: float) -> float:
    """``win_rate`` if it is a detectable win rate (0 to 1, at least 0.01 away from 0.5); one sentence otherwise."""
    if not (isinstance(win_rate, int | float) and 0.0 < win_rate < 1.0):
        raise SteerLabError(
            f"The win rate to detect {win_rate!r} is not strictly between 0 and 1: use a value like 0.6."
        )
    if abs(win_rate - 0.5) < MIN_WIN_RATE_DISTANCE:
        raise SteerLabError(
            f"The win rate to detect {win_rate:g} is within {MIN_WIN_RATE_DISTANCE:g} of 50%, which would take "
            "tens of thousands of decisive votes: choose a larger effect, like 0.6."
        )
    return float(win_rate)


def _z(p: float) -> float:
    return float(special.ndtri(p))


def decisive_votes_needed(win_rate: float = 0.6, alpha: float = 0.05, power: float = 0.8) -> int:
    """Decisive votes a fixed-sample two-sided test of "win rate = 1/2" needs to detect ``win_rate``
    with ``power`` (formula in the module docstring; 0.6, 0.05, 0.8 gives 194)."""
    p1 = check_win_rate(win_rate)
    z_alpha, z_power = _z(1.0 - check_alpha(alpha) / 2.0), _z(check_power(power))
    root = z_alpha * 0.5 + z_power * math.sqrt(p1 * (1.0 - p1))
    return math.ceil(root * root / (p1 - 0.5) ** 2)


def prompts_needed(sd: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Prompts a fixed-sample paired t-test needs to detect a mean difference of ``difference`` with
    ``power`` when per-prompt mean differences have standard deviation ``sd`` (formula in the module
    docstring; at least 2, the fewest a t-test can use)."""
    _check_difference(sd, difference)
    a, p = check_alpha(alpha), check_power(power)
    if sd == 0.0:
        return 2
    ratio = sd / abs(difference)
    # The right-hand side falls as n grows (the t quantiles shrink towards the normal ones), so
    # the smallest n that is at least its own right-hand side is found by counting up from the
    # normal answer, which is never above it.
    n = max(2, math.ceil(((_z(1.0 - a / 2.0) + _z(p)) * ratio) ** 2))
    while n < ((float(special.stdtrit(n - 1, 1.0 - a / 2.0)) + float(special.stdtrit(n - 1, p))) * ratio) ** 2:
        n += 1
    return n


def _check_difference(sd: float, difference: float) -> None:
    if not (math.isfinite(sd) and sd >= 0.0):
        raise SteerLabError(
            f"The spread of the per-prompt differences {sd!r} is not a finite non-negative number: "
            "it needs scores on at least 2 prompts."
        )
    if not (math.isfinite(difference) and difference != 0.0):
        raise SteerLabError(
            f"The difference to detect {difference!r} is not a finite non-zero number: give the smallest "
            "difference worth detecting, like 0.05."
        )
