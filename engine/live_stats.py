"""Unpaired comparisons of live traffic: an arm's users against the baseline's users.

Live feedback differs from an offline run in two ways, and the statistics follow them:

- **Unpaired.** Each user sees one arm, so an arm and the baseline are two independent
  samples (not rows paired by prompt). A share of 0/1 units (:func:`compare_thumbs`) gets
  the Wilson interval and the difference of two shares the Newcombe hybrid score interval
  (Newcombe 1998, method 10, which keeps its coverage near 95% where the Wald interval does
  not); means of units' values in [0, 1] (:func:`compare_scores`: scores, or users' shares
  of thumbs up when a user gave mixed thumbs) get the t interval and their difference the
  Welch interval (unequal variances). :mod:`service.live_comparison` picks one of the two
  for a whole deployment. These hold for *one* look.
- **Watched continuously.** Teams read live numbers every hour, and a fixed-sample interval
  read that often finds a difference between equal arms far more often than alpha. The
  verdicts therefore rest on an always-valid test: the asymptotic confidence sequence of
  Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas (2021, Theorem 2.2) for the difference,
  written with the difference's influence function, so that the t-th observation (a user's
  feedback on one of the two arms, arm drawn at random) is one i.i.d. unit:

      D_t ± sqrt(V_t) * sqrt( 2 (t r^2 + 1) / (t r^2) * log( sqrt(t r^2 + 1) / alpha ) ),

  where V_t = s_1^2/n_1 + s_0^2/n_0 is the plug-in variance of D_t, t = n_1 + n_0, and r the
  mixture's tuning, set so that the sequence is narrowest at ``TARGET_OBSERVATIONS``. The
  p-value is the alpha at which the sequence just touches 0. Asymptotic means: valid once the
  plug-in spread is reliable (hundreds of observations; tests/test_live_stats.py checks a
  look after every 50 observations keeps false positives below alpha), which is why
  :mod:`engine.sequential` keeps its exact tests for the tens of prompts of an offline run.

Verdicts use the words of :mod:`engine.verdicts` (better, worse, no detectable difference,
keep collecting, with how many more observations); a family of comparisons (arms x metrics)
is corrected with :func:`engine.verdicts.correct` (Holm by default), which is valid for
always-valid p-values too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy import stats as scipy_stats

from engine.multiplicity import CORRECTION_NAMES, CorrectionMethod
from engine.power import check_alpha, check_power
from engine.stats import Estimate, format_p_value, wilson_interval

# The sequence is tightest near this many observations (arm + baseline); valid for any value.
TARGET_OBSERVATIONS = 1000
# Smallest differences worth detecting when the experiment names none: 5 points of
# thumbs-up share, 0.05 on the [0, 1] score scale.
THUMBS_EFFECT = 0.05
SCORE_EFFECT = 0.05
LiveLabel = Literal["better", "worse", "no detectable difference", "keep collecting"]


def _z(alpha: float) -> float:
    return float(special.ndtri(1.0 - alpha / 2.0))


# --- fixed-sample intervals (one look) ---------------------------------------------------------


def wilson_bounds(
    successes: ArrayLike, n: ArrayLike, z: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Share, low and high of Wilson intervals, element-wise (n = 0 gives NaN, 0, 1)."""
    s, m = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = s / m
        denominator = 1 + z * z / m
        centre = (p + z * z / (2 * m)) / denominator
        half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / denominator
    empty = m == 0
    return p, np.where(empty, 0.0, np.maximum(0.0, centre - half)), np.where(empty, 1.0, np.minimum(1.0, centre + half))


def newcombe_difference(
    s1: ArrayLike, n1: ArrayLike, s0: ArrayLike, n0: ArrayLike, alpha: float = 0.05
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Difference p1 - p0 of two independent shares with Newcombe's hybrid score interval, element-wise."""
    z = _z(alpha)
    p1, l1, u1 = wilson_bounds(s1, n1, z)
    p0, l0, u0 = wilson_bounds(s0, n0, z)
    d = p1 - p0
    low = d - np.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return d, low, high


def welch_difference(
    mean1: ArrayLike, var1: ArrayLike, n1: ArrayLike, mean0: ArrayLike, var0: ArrayLike, n0: ArrayLike, alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Difference of two independent means with the Welch interval and its two-sided p-value, element-wise
    (sample variances with n - 1; fewer than 2 values on a side gives NaN)."""
    m1, v1, k1 = np.asarray(mean1, float), np.asarray(var1, float), np.asarray(n1, float)
    m0, v0, k0 = np.asarray(mean0, float), np.asarray(var0, float), np.asarray(n0, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = v1 / k1, v0 / k0
        se = np.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (k1 - 1) + b * b / (k0 - 1))
        d = m1 - m0
        q = scipy_stats.t.ppf(1 - alpha / 2, df)
        p = 2 * scipy_stats.t.sf(np.abs(d) / se, df)
    bad = (k1 < 2) | (k0 < 2) | ~(se > 0)
    nan = np.full(np.shape(d), math.nan)
    return d, np.where(bad, nan, d - q * se), np.where(bad, nan, d + q * se), np.where(bad, nan, p)


# --- the always-valid sequence -----------------------------------------------------------------


def mixture_tuning(alpha: float, target: int = TARGET_OBSERVATIONS) -> float:
    """The r^2 of the asymptotic sequence that makes it narrowest at ``target`` observations
    (Waudby-Smith et al. 2021, eq. 13)."""
    log_term = -2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)
    return log_term / target


def sequence_multiplier(t: ArrayLike, alpha: float, tuning: float) -> NDArray[np.float64]:
    """How many standard errors the asymptotic confidence sequence spans at t observations."""
    tr = np.asarray(t, dtype=float) * tuning
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(2 * (tr + 1) / tr * np.log(np.sqrt(tr + 1) / alpha))


def sequence_p_value(z: ArrayLike, t: ArrayLike, tuning: float) -> NDArray[np.float64]:
    """The alpha at which the sequence's edge reaches 0 when the difference is z standard errors from it."""
    tr = np.asarray(t, dtype=float) * tuning
    zz = np.asarray(z, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = np.sqrt(tr + 1) * np.exp(-(zz**2) * tr / (2 * (tr + 1)))
    return np.minimum(1.0, p)


# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveVerdict:
    label: LiveLabel
    more_needed: int | None  # more observations (arm + baseline); 0 unless "keep collecting"; None: unknown
    sentence: str
    n: int  # observations so far (arm + baseline)
    needed: int | None


def observations_needed(sd1: float, sd0: float, share1: float, effect: float, alpha: float, power: float) -> int:
    """Observations (arm + baseline, in the arm's share ``share1``) at which the always-valid
    sequence at ``alpha`` excludes 0 with ``power`` when the true difference is ``effect``."""
    tuning = mixture_tuning(alpha)
    z_power = float(special.ndtri(power))
    share1 = min(max(share1, 0.05), 0.95)
    unit_sd = math.sqrt(sd1**2 / share1 + sd0**2 / (1 - share1))  # sqrt(t * variance of D_t)

    def enough(t: int) -> bool:
        return (float(sequence_multiplier(t, alpha, tuning)) + z_power) * unit_sd / math.sqrt(t) <= effect

    high = 16
    while not enough(high):
        high *= 2
        if high > 10**9:
            return high
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def live_verdict(
    estimate: float,
    p_value: float,
    n: int,
    needed: int | None,
    alpha: float,
    effect: str,
    power: float,
    correction: CorrectionMethod | None,
    family: int,
) -> LiveVerdict:
    """Better / worse / no detectable difference / keep collecting, in the words of engine.verdicts."""
    how, so_far = format_p_value(p_value), f"{n} so far"
    if correction is not None and family > 1:
        how += f", {CORRECTION_NAMES[correction]}-adjusted over {family} comparisons"
        so_far = f"corrected for {family} comparisons; {so_far}"
    chance = f"{100 * power:g}%"
    count = f"{n} observation{'' if n == 1 else 's'}"
    if math.isfinite(p_value) and p_value <= alpha and math.isfinite(estimate) and estimate != 0.0:
        label: LiveLabel = "better" if estimate > 0 else "worse"
        sentence = (
            f"{label.capitalize()}: the always-valid test is significant at alpha {alpha:g} ({how}) after {count}."
        )
        return LiveVerdict(label, 0, sentence, n, needed)
    if needed is None:
        return LiveVerdict(
            "keep collecting",
            None,
            f"Keep collecting: too little feedback yet to estimate how many more observations are needed to "
            f"detect {effect} with {chance} power ({so_far}).",
            n,
            None,
        )
    if n >= needed:
        return LiveVerdict(
            "no detectable difference",
            0,
            f"No detectable difference: {count}, enough to detect {effect} with {chance} power, and the "
            f"always-valid test is not significant ({how}).",
            n,
            needed,
        )
    more = needed - n
    return LiveVerdict(
        "keep collecting",
        more,
        f"Keep collecting: about {more} more observation{'' if more == 1 else 's'} to detect {effect} with "
        f"{chance} power ({so_far}).",
        n,
        needed,
    )


@dataclass(frozen=True)
class LiveDifference:
    """An arm against the baseline on one metric (thumbs-up share or mean score), unpaired."""

    metric: str  # "thumbs_up" or "score"
    arm: Estimate  # the arm's share (Wilson) or mean (t), 1 - alpha interval, n = its observations
    baseline: Estimate
    estimate: float  # arm - baseline
    low: float  # fixed-sample 1 - alpha interval (Newcombe / Welch): right for one look
    high: float
    always_low: float  # always-valid 1 - alpha confidence sequence: right for every look
    always_high: float
    raw_p_value: float  # always-valid p-value of "no difference"
    alpha: float
    power: float
    effect: float  # smallest difference worth detecting
    spreads: tuple[float, float, float]  # arm sd, baseline sd, arm's share of observations (for the power)
    adjusted_p_value: float
    verdict: LiveVerdict
    correction: CorrectionMethod | None = None
    family: int = 1

    @property
    def p_value(self) -> float:
        return self.raw_p_value

    @property
    def n(self) -> int:
        return self.arm.n + self.baseline.n

    def corrected(self, adjusted_p_value: float, method: CorrectionMethod, family: int) -> Self:
        return dataclasses.replace(
            self,
            adjusted_p_value=adjusted_p_value,
            correction=method,
            family=family,
            verdict=self._verdict(adjusted_p_value, method, family),
        )

    def _verdict(self, p_value: float, method: CorrectionMethod | None, family: int) -> LiveVerdict:
        sd1, sd0, share = self.spreads
        needed = None
        if self.arm.n >= 2 and self.baseline.n >= 2 and sd0 + sd1 > 0:
            needed = observations_needed(sd1, sd0, share, self.effect, self.alpha / family, self.power)
        words = (
            f"a {100 * self.effect:g}-point difference in thumbs-up share"
            if self.metric == "thumbs_up"
            else f"a difference of {self.effect:g} in mean score"
        )
        return live_verdict(self.estimate, p_value, self.n, needed, self.alpha, words, self.power, method, family)


def _always_valid(d: float, variance: float, t: int, alpha: float) -> tuple[float, float, float]:
    """The sequence's bounds, clipped to [-1, 1] (shares and [0, 1] scores cannot differ by more;
    clipping keeps the coverage), and its p-value."""
    if t < 2 or not (variance > 0) or not math.isfinite(d):
        return math.nan, math.nan, math.nan
    tuning = mixture_tuning(alpha)
    se = math.sqrt(variance)
    half = float(sequence_multiplier(t, alpha, tuning)) * se
    return max(-1.0, d - half), min(1.0, d + half), float(sequence_p_value(d / se, t, tuning))


def _finish(difference: LiveDifference) -> LiveDifference:
    return dataclasses.replace(difference, verdict=difference._verdict(difference.raw_p_value, None, 1))


def compare_thumbs(
    up1: int, n1: int, up0: int, n0: int, alpha: float = 0.05, power: float = 0.8, effect: float = THUMBS_EFFECT
) -> LiveDifference:
    """An arm's thumbs-up share (``up1`` of ``n1`` thumbs) against the baseline's (``up0`` of ``n0``)."""
    alpha, power = check_alpha(alpha), check_power(power)
    z = _z(alpha)
    d, low, high = (float(x) for x in newcombe_difference(up1, n1, up0, n0, alpha))
    # Plug-in spreads, pulled off 0 and 1 so that an all-up start does not claim zero variance.
    q1, q0 = (up1 + 1) / (n1 + 2), (up0 + 1) / (n0 + 2)
    sd1, sd0 = math.sqrt(q1 * (1 - q1)), math.sqrt(q0 * (1 - q0))
    variance = sd1**2 / n1 + sd0**2 / n0 if n1 and n0 else math.nan
    always_low, always_high, p = _always_valid(d, variance, n1 + n0, alpha)
    share = n1 / (n1 + n0) if n1 + n0 else 0.5
    return _finish(
        LiveDifference(
            "thumbs_up",
            wilson_interval(up1, n1, z),
            wilson_interval(up0, n0, z),
            d,
            low,
            high,
            always_low,
            always_high,
            p,
            alpha,
            power,
            effect,
            (sd1, sd0, share),
            p,
            LiveVerdict("keep collecting", None, "", 0, None),
        )
    )


def mean_estimate(values: Sequence[float], alpha: float) -> Estimate:
    """Mean with its t interval at 1 - alpha (NaN bounds below 2 values)."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    half = float(scipy_stats.t.ppf(1 - alpha / 2, n - 1)) * float(data.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def compare_scores(
    scores1: Sequence[float],
    scores0: Sequence[float],
    alpha: float = 0.05,
    power: float = 0.8,
    effect: float = SCORE_EFFECT,
) -> LiveDifference:
    """An arm's feedback values in [0, 1] against the baseline's: Welch interval and the always-valid sequence."""
    alpha, power = check_alpha(alpha), check_power(power)
    x1, x0 = np.asarray(scores1, dtype=float), np.asarray(scores0, dtype=float)
    n1, n0 = len(x1), len(x0)
    v1 = float(x1.var(ddof=1)) if n1 >= 2 else math.nan
    v0 = float(x0.var(ddof=1)) if n0 >= 2 else math.nan
    m1 = float(x1.mean()) if n1 else math.nan
    m0 = float(x0.mean()) if n0 else math.nan
    d, low, high, _ = (float(x) for x in welch_difference(m1, v1, n1, m0, v0, n0, alpha))
    always_low, always_high, p = _always_valid(
        d, v1 / n1 + v0 / n0 if n1 >= 2 and n0 >= 2 else math.nan, n1 + n0, alpha
    )
    share = n1 / (n1 + n0) if n1 + n0 else 0.5
    sd1 = math.sqrt(v1) if math.isfinite(v1) else 0.0
    sd0 = math.sqrt(v0) if math.isfinite(v0) else 0.0
    return _finish(
        LiveDifference(
            "score",
            mean_estimate(x1.tolist(), alpha),
            mean_estimate(x0.tolist(), alpha),
            d,
            low,
            high,
            always_low,
            always_high,
            p,
            alpha,
            power,
            effect,
            (sd1, sd0, share),
            p,
            LiveVerdict("keep collecting", None, "", 0, None),
        )
    )


def quantiles(values: Sequence[float]) -> tuple[float, float]:
    """p50 and p95 (NaN without values)."""
    if not values:
        return math.nan, math.nan
    p50, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return float(p50), float(p95)
