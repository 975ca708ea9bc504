"""Statistics for comparisons: every estimate comes with its sample size and an interval.

Scores are per generation, keyed by (prompt, sample), and generations of one prompt are not
independent (they share the prompt), so score intervals treat the *prompt* as the unit:
:func:`prompt_mean` averages each prompt's generations and puts a t-interval over the
per-prompt means (df = prompts - 1); :func:`paired_difference` does the same with the
per-prompt mean of variant-minus-baseline differences over matched (prompt, sample) rows,
which every variant shares with the baseline's random stream (common random numbers).

Skewed scores make a plain t-interval miss on one side at the prompt counts teams use
(simulated, exponential prompt effects and samples, 10 prompts: 92.3% for "95%"). Both intervals
therefore use Hall's (1992) skewness-removing transformation of the t statistic,

    g(t) = t + a t^2 + a^2 t^3 / 3 + b,  a = G1 / (3 sqrt(n)),  b = G1 / (6 sqrt(n)),

with G1 the adjusted sample skewness of the per-prompt values; g is monotone (its derivative
is (1 + a t)^2), so it inverts in closed form and the interval is
[mean - g^-1(q) se, mean - g^-1(-q) se] with q the Student-t quantile on n - 1 degrees of
freedom and se = sd / sqrt(n). Without skew (G1 = 0) it is the ordinary t-interval. The
coverage test (tests/test_stats_coverage.py) measures 93.9-95.4% for normal, exponential and
log-normal scores at 10, 30 and 100 prompts (3 samples each), where the cluster bootstrap this
replaced covers 87-90% at 10 prompts. Very heavy skew (log-normal prompt effects with sigma
0.75, per-prompt skewness about 3) still leaves about 92.5% at 10 prompts and 93.5% at 30
(the plain t-interval: 89% and 92%): pages warn below FEW_PROMPTS.

References: P. Hall, "On the removal of skewness by transformation", JRSS B 54 (1992);
X.-H. Zhou and P. Dinh, "Nonparametric confidence intervals for the one- and two-sample
problems", Biostatistics 6 (2005) (Hall's interval against Johnson's and the bootstrap on
skewed data).

Bootstraps are seeded, so the same data always gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from engine.errors import SteerLabError

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
    resampled, because generations of one prompt are not independent of each other. With few
    clusters the interval is too narrow (10 prompts: 87-90% for "95%", see
    tests/test_stats_coverage.py): scores use :func:`prompt_mean` instead.
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


# Below this many prompts a score interval rests on few independent units: its width is
# itself uncertain and a skewed score can still make it miss more often than stated (see the
# module docstring), so pages show a warning next to it.
FEW_PROMPTS = 20


def check_confidence(confidence: float) -> float:
    """``confidence`` if it is a level strictly between 0 and 1; one sentence otherwise."""
    if not (isinstance(confidence, int | float) and 0.0 < confidence < 1.0):
        raise SteerLabError(
            f"The confidence level {confidence!r} is not strictly between 0 and 1: give a level like 0.95."
        )
    return float(confidence)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def skewness(values: ArrayLike) -> float:
    """Adjusted Fisher–Pearson sample skewness G1 (0 for fewer than 3 values or no spread).

    G1 = g1 sqrt(n (n - 1)) / (n - 2) with g1 = m3 / m2^1.5 (central moments with divisor n);
    the adjustment makes it less biased towards 0 in small samples, where it matters here.
    """
    data = np.asarray(values, dtype=float)
    n = data.size
    if n < 3:
        return 0.0
    centred = data - data.mean()
    m2 = float(np.mean(centred**2))
    if m2 <= 0.0 or not math.isfinite(m2):
        return 0.0
    g1 = float(np.mean(centred**3)) / m2**1.5
    return g1 * math.sqrt(n * (n - 1)) / (n - 2)


def hall_transform(t: ArrayLike, skew: ArrayLike, n: ArrayLike) -> NDArray[np.float64]:
    """Hall's (1992) transformation g(t) of a t statistic; g(T) is close to Student-t even for skewed data.

    Vectorised over all three arguments (broadcast). ``skew`` is G1 of the sample, ``n`` its size.
    """
    t_, a, b = _hall_terms(t, skew, n)
    return np.asarray(t_ + a * t_**2 + a * a * t_**3 / 3.0 + b, dtype=float)


def hall_inverse(u: ArrayLike, skew: ArrayLike, n: ArrayLike) -> NDArray[np.float64]:
    """The t with g(t) = u (the inverse of :func:`hall_transform`): g(t) = ((1 + a t)^3 - 1) / (3a) + b."""
    u_, a, b = _hall_terms(u, skew, n)
    tiny = np.abs(a) < 1e-12
    safe = np.where(tiny, 1.0, a)
    return np.asarray(np.where(tiny, u_ - b, (np.cbrt(1.0 + 3.0 * a * (u_ - b)) - 1.0) / safe), dtype=float)


def _hall_terms(
    x: ArrayLike, skew: ArrayLike, n: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    root_n = np.sqrt(np.asarray(n, dtype=float))
    g = np.asarray(skew, dtype=float)
    return np.asarray(x, dtype=float), g / (3.0 * root_n), g / (6.0 * root_n)


@dataclass(frozen=True)
class SkewCorrectedMean:
    """The mean of a sample of independent units, with its skewness-corrected t-interval and t-test."""

    value: float
    low: float
    high: float
    n: int
    sd: float  # of the units (ddof = 1)
    p_value: float  # two-sided, of "the true mean is 0"


def skew_corrected_mean(units: ArrayLike, confidence: float = 0.95) -> SkewCorrectedMean:
    """Mean of ``units`` with Hall's skewness-corrected t-interval and the matching two-sided test of 0.

    The p-value is below 1 - ``confidence`` exactly when the interval excludes 0 (the test is
    the interval inverted). One unit gives the mean with no interval (NaN); none gives NaN.
    """
    level = check_confidence(confidence)
    data = np.asarray(units, dtype=float)
    n = data.size
    if n == 0:
        return SkewCorrectedMean(math.nan, math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(data.mean())
    if n == 1:
        return SkewCorrectedMean(mean, math.nan, math.nan, 1, math.nan, math.nan)
    sd = float(data.std(ddof=1))
    if sd == 0.0:  # every unit the same: no spread to build an interval from
        return SkewCorrectedMean(mean, mean, mean, n, 0.0, 1.0 if mean == 0.0 else 0.0)
    se = sd / math.sqrt(n)
    skew = skewness(data)
    q = float(special.stdtrit(n - 1, 0.5 + level / 2.0))
    low = mean - float(hall_inverse(q, skew, n)) * se
    high = mean - float(hall_inverse(-q, skew, n)) * se
    u = float(hall_transform(mean / se, skew, n))
    p_value = float(min(1.0, 2.0 * special.stdtr(n - 1, -abs(u))))
    return SkewCorrectedMean(mean, low, high, n, sd, p_value)


# Up to this many units every sign pattern is tried (2^16 patterns); beyond, a seeded sample.
EXACT_SIGN_FLIPS = 16
SIGN_FLIP_ROUNDS = 20_000


def sign_flip_p_value(units: ArrayLike, rounds: int = SIGN_FLIP_ROUNDS, seed: int = 0) -> float:
    """Two-sided p-value of "no difference" by flipping the signs of per-prompt differences.

    If a variant does nothing to a score, its output and the baseline's on the same (prompt,
    sample) are exchangeable, so each prompt's mean difference is as likely negative as
    positive: every sign pattern is equally likely, and the share of patterns whose |mean| is at
    least the observed one is an exact p-value, at any level and for any distribution. A
    t-test's p-value is only approximate at the small levels a correction over many comparisons
    asks for (at 10 prompts and alpha 0.05 / 24, twice too many false positives for normal scores,
    eight times for log-normal ones). Exact over every pattern up to EXACT_SIGN_FLIPS prompts,
    else from ``rounds`` seeded patterns with the +1 correction that keeps it valid. NaN below 2.
    """
    data = np.asarray(units, dtype=float)
    data = data[np.isfinite(data)]
    n = data.size
    if n < 2:
        return math.nan
    observed = abs(float(data.mean()))
    if n <= EXACT_SIGN_FLIPS:
        patterns = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        means = np.abs(patterns @ data) / n
        # A tolerance so that floating-point noise never hides the observed pattern itself.
        return float(np.mean(means >= observed * (1 - 1e-12) - 1e-15))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, rounds, 5_000):  # chunks: 5,000 patterns x n at a time
        size = min(5_000, rounds - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        hits += int(np.sum(np.abs(signs @ data) / n >= observed * (1 - 1e-12) - 1e-15))
    return (hits + 1) / (rounds + 1)


@dataclass(frozen=True)
class MeanEstimate:
    """A variant's mean score over prompts with its interval, and the two sample sizes behind it.

    ``value`` is the mean of the per-prompt means (each prompt weighs the same, however many of its
    generations were scored): that is the quantity the interval is about, the expected score on a
    prompt like these. With equal samples per prompt it equals the mean over generations.
    """

    value: float
    low: float
    high: float
    prompts: int  # the independent units the interval rests on
    generations: int  # scored generations behind the prompt means
    confidence: float = 0.95

    @property
    def n(self) -> int:
        """The sample size of the interval: prompts (so it reads like :class:`Estimate`)."""
        return self.prompts

    @property
    def few_prompts(self) -> bool:
        """Whether the interval rests on fewer than FEW_PROMPTS prompts (pages warn)."""
        return self.prompts < FEW_PROMPTS

    def enough(self, minimum: int) -> bool:
        """Whether the estimate rests on at least ``minimum`` prompts and has a value."""
        return self.prompts >= minimum and math.isfinite(self.value)

    def describe(self, digits: int = 3) -> str:
        """E.g. "0.112 [0.054, 0.172] (10 prompts, 30 generations)"."""
        sizes = f"{plural(self.prompts, 'prompt')}, {plural(self.generations, 'generation')}"
        if not math.isfinite(self.value):
            return f"no scores ({sizes})"
        if not math.isfinite(self.low):
            return f"{self.value:.{digits}f} (no interval from {plural(self.prompts, 'prompt')}; {sizes})"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] ({sizes})"


def prompt_mean(values: Sequence[float], prompts: Sequence[Hashable], confidence: float = 0.95) -> MeanEstimate:
    """The mean of per-prompt means of ``values`` (one per generation; ``prompts`` names each one's
    prompt), with a skewness-corrected Student-t interval over prompts (df = prompts - 1).

    Non-finite values (a generation a scorer could not score) are left out and not counted.
    """
    if len(values) != len(prompts):
        raise ValueError(f"{len(values)} values but {len(prompts)} prompts: give one prompt per value")
    means, generations = group_means(np.asarray(values, dtype=float), prompts)
    result = skew_corrected_mean(means, confidence)
    return MeanEstimate(result.value, result.low, result.high, result.n, generations, confidence)


def group_means(values: NDArray[np.float64], groups: Sequence[Hashable]) -> tuple[NDArray[np.float64], int]:
    """Per-group means of the finite values (groups in order of first appearance) and how many values counted."""
    finite = np.isfinite(values)
    index: dict[Hashable, int] = {}
    codes = np.fromiter(
        (index.setdefault(g, len(index)) for g, keep in zip(groups, finite, strict=True) if keep),
        dtype=np.intp,
    )
    kept = values[finite]
    sums = np.bincount(codes, weights=kept, minlength=len(index))
    counts = np.bincount(codes, minlength=len(index))
    return sums / np.maximum(counts, 1), int(kept.size)


# A matched row: (prompt, sample). The prompt is the unit of independence.
RowKey = TypeVar("RowKey", bound=tuple[Hashable, Hashable])


@dataclass(frozen=True)
class PairedDifference:
    """Variant minus baseline over matched (prompt, sample) rows, as a mean over prompts.

    ``value`` is the mean of the per-prompt mean differences; the interval and the two-sided
    p-value come from the skewness-corrected t over those per-prompt differences (df = prompts - 1).
    """

    value: float
    low: float
    high: float
    prompts: int  # prompts with at least one matched row: the units of the interval
    pairs: int  # matched (prompt, sample) rows
    sd: float  # of the per-prompt mean differences
    p_value: float  # two-sided, of "no difference"; below 1 - confidence exactly when the interval excludes 0
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return self.prompts

    @property
    def few_prompts(self) -> bool:
        return self.prompts < FEW_PROMPTS

    def describe(self, digits: int = 3) -> str:
        """E.g. "+0.041 [+0.012, +0.070] (10 prompts, 30 pairs; p = 0.008)"."""
        sizes = f"{plural(self.prompts, 'prompt')}, {plural(self.pairs, 'pair')}"
        if not self.prompts:
            return "no matched (prompt, sample) rows"
        if not math.isfinite(self.low):
            return f"{self.value:+.{digits}f} (no interval from {plural(self.prompts, 'prompt')}; {sizes})"
        return (
            f"{self.value:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] "
            f"({sizes}; {format_p_value(self.p_value)})"
        )


def format_p_value(p: float) -> str:
    """ "p = 0.008", "p < 0.001" or "p = n/a"."""
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def prompt_differences(
    variant: Mapping[RowKey, float], baseline: Mapping[RowKey, float]
) -> tuple[NDArray[np.float64], int]:
    """Per-prompt mean of variant minus baseline over the (prompt, sample) rows both have with finite
    scores (prompts in order of first appearance in ``variant``), and the number of such rows."""
    keys = [k for k, v in variant.items() if k in baseline and math.isfinite(v) and math.isfinite(baseline[k])]
    differences = np.array([variant[k] - baseline[k] for k in keys], dtype=float)
    means, pairs = group_means(differences, [k[0] for k in keys])
    return means, pairs


def paired_difference(
    variant: Mapping[RowKey, float], baseline: Mapping[RowKey, float], confidence: float = 0.95
) -> PairedDifference:
    """Variant minus baseline, paired over the (prompt, sample) rows both have (see :class:`PairedDifference`).

    Rows only one side has are left out. No shared row gives NaNs and zero counts (no error).
    """
    means, pairs = prompt_differences(variant, baseline)
    result = skew_corrected_mean(means, confidence)
    return PairedDifference(
        result.value, result.low, result.high, result.n, pairs, result.sd, result.p_value, confidence
    )
