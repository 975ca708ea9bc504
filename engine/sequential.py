"""Always-valid tests: a team may look after every vote and stop as soon as the answer is clear.

A fixed-sample p-value checked after every vote finds a "significant" difference between
two equal variants in nearly half of all experiments by 500 votes (46% simulated, see
tests/test_sequential.py, where the tests below stay at 1.3-4.0% for alpha 5%).
The tests here bound the false-positive rate by ``alpha`` over *all* looks: each rests on a
nonnegative martingale M_n with M_0 = 1 under the null, so by Ville's inequality
P(M_n >= 1/alpha for some n) <= alpha, and 1/M_n is a p-value at every look, whenever and
however often the team looks (Johari et al. 2017; Howard et al. 2021). Inverting the test
of every null value gives a confidence sequence: an interval that contains the truth at all
times at once with probability 1 - alpha. These functions take counts or values, not the
order of arrival, so they report 1/M_n at the current n; the running minimum over earlier
looks would be valid too, and at least as small.

**Votes** (decisive votes between two variants: wins against losses) test "win rate = 1/2"
with a mixture sequential probability ratio test (mSPRT): the likelihood ratio of a
Beta(a, a) mixture of win rates against 1/2,

    M_n = B(a + W, a + L) / B(a, a) * 2^n,

a martingale under the null. The confidence sequence for the win rate p is every p whose
mixture ratio B(a + W, a + L) / B(a, a) / (p^W (1 - p)^L) is below 1/alpha. The mixture
spread is set to the win rate the team wants to detect (sd of the Beta = |p1 - 1/2|, as
Johari et al. recommend: the test is then quickest around that effect; valid for any a).

**Scores** (per-prompt mean differences against the baseline, one unit per prompt) test "mean
difference = 0" with the sequential t-test: the Bayes factor of a normal mixture over the
standardised effect (N(0, tau^2)) with a scale-invariant (right-Haar) prior on the spread,

    M_n = (1 + n tau^2)^(-1/2) * [ (1 + t^2/nu) / (1 + t^2 / (nu (1 + n tau^2))) ]^(n/2),  nu = n - 1,

(Rouder et al. 2009 with a fixed g = tau^2), a test martingale for normal data whatever their
spread (Lai 1976; Pérez-Ortiz, Lardy, de Heide and Grünwald 2024). The t statistic is first
passed through Hall's skewness correction (engine.stats.hall_transform), as the fixed-sample
interval is. The t-test is exact only for normal data; simulated at alpha 5%, checked after
every prompt up to 300 prompts, it gave 2.6% false positives for normal per-prompt
differences and 3.0-3.5% for skewed ones (skewness 1.4-1.8; tests/test_sequential.py),
3.3% for exponential ones (skewness 2) and 5.0% for log-normal ones (sigma 0.75, skewness
about 3); without the correction 2.8%, 7.8% (exponential) and 10.8%. A fixed-sample t-test checked
as often: 46-58%.

Why not the asymptotic confidence sequence (Waudby-Smith et al., as GrowthBook uses)?
Its plug-in standard deviation is reliable only with many units: checked after every prompt
from 10 prompts up to 300, it gave 4-5% false positives for normal differences but 12-17%
for skewed ones; teams have tens of prompts, not thousands of users.

References: R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Peeking at A/B tests: why it
matters, and what to do about it", KDD 2017, and "Always valid inference: continuous
monitoring of A/B tests", Operations Research 70 (2022); S. R. Howard, A. Ramdas,
J. McAuliffe, J. Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences",
Annals of Statistics 49 (2021); I. Waudby-Smith, D. Arbour, R. Sinha, E. H. Kennedy,
A. Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences" (2021);
T. L. Lai, "On confidence sequences", Annals of Statistics 4 (1976); J. N. Rouder et al.,
"Bayesian t tests for accepting and rejecting the null hypothesis", Psychon. Bull. Rev. 16
(2009); M. F. Pérez-Ortiz et al., "E-statistics, group invariance and anytime-valid testing",
Annals of Statistics 52 (2024).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

from engine.power import check_alpha, check_power, check_win_rate, prompts_needed
from engine.stats import format_p_value, hall_inverse, hall_transform, plural, skewness

# The spread of the mixture over standardised effects (mean difference / sd of per-prompt
# differences) of the score test. The test is valid for any value and quickest for effects
# near it; fixed rather than taken from the data, which would break the martingale. 0.3
# rather than a "medium" 0.5: as quick for effects of 0.5 sd (65 prompts for 80% power
# either way), quicker for smaller ones, and it keeps skewed differences' false positives
# further below alpha (exponential, skewness 2: 3.3% against 5.0% with 0.5), as it puts its weight
# on later looks, where the t statistic is closer to its normal-theory law.
SCORE_MIXTURE_SD = 0.3


@dataclass(frozen=True)
class AlwaysValid:
    """An always-valid estimate: a confidence sequence and a p-value that hold at every look."""

    value: float  # the win rate, or the mean difference
    low: float
    high: float
    p_value: float  # of the null: win rate 1/2, or mean difference 0
    n: int  # decisive votes, or prompts
    alpha: float  # the confidence sequence covers with probability 1 - alpha at all looks

    def describe(self, unit: str, digits: int = 3) -> str:
        """E.g. "0.640 [0.520, 0.750] always-valid 95% (p = 0.020; 120 decisive votes)"."""
        level = f"{100 * (1 - self.alpha):g}%"
        size = plural(self.n, unit.removesuffix("s"))
        if not math.isfinite(self.value):
            return f"no data ({size})"
        return (
            f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] always-valid {level} "
            f"({format_p_value(self.p_value)}; {size})"
        )


# --- votes: the Beta-mixture SPRT ---------------------------------------------------------


def vote_mixture_concentration(win_rate: float) -> float:
    """The a of the Beta(a, a) mixture whose spread (sd) is |win_rate - 1/2|, at least 1 (uniform).

    The sd of Beta(a, a) is 1 / (2 sqrt(2a + 1)), so a = (1 / (4 d^2) - 1) / 2 with d = |win_rate - 1/2|.
    """
    distance = abs(check_win_rate(win_rate) - 0.5)
    return max(1.0, (1.0 / (4.0 * distance * distance) - 1.0) / 2.0)


def vote_log_likelihood_ratio(
    wins: ArrayLike, losses: ArrayLike, concentration: float, null: float = 0.5
) -> NDArray[np.float64]:
    """log M_n of the Beta(a, a) mixture against a win rate of ``null`` (vectorised over wins and losses).

    B(a + W, a + L) / B(a, a) / (null^W (1 - null)^L): a martingale when the true win rate is
    ``null``, whatever the mixture, so testing every ``null`` gives the confidence sequence.
    """
    w, lo = np.asarray(wins, dtype=float), np.asarray(losses, dtype=float)
    a = float(concentration)
    mixture = special.betaln(a + w, a + lo) - special.betaln(a, a)
    return np.asarray(mixture - special.xlogy(w, null) - special.xlog1py(lo, -null), dtype=float)


def vote_p_value(wins: ArrayLike, losses: ArrayLike, concentration: float) -> NDArray[np.float64]:
    """The always-valid p-value min(1, 1/M_n) of "win rate = 1/2" (vectorised)."""
    return np.asarray(np.minimum(1.0, np.exp(-vote_log_likelihood_ratio(wins, losses, concentration))), dtype=float)


def vote_test(wins: int, losses: int, alpha: float = 0.05, win_rate: float = 0.6) -> AlwaysValid:
    """Always-valid p-value of "win rate = 1/2" and confidence sequence for the win rate, from
    decisive votes; the mixture is tuned to detect ``win_rate`` (or 1 - win_rate) quickest."""
    a_level = check_alpha(alpha)
    if wins < 0 or losses < 0:
        raise ValueError(f"negative vote counts: {wins} wins, {losses} losses")
    concentration = vote_mixture_concentration(win_rate)
    n = wins + losses
    if n == 0:
        return AlwaysValid(math.nan, 0.0, 1.0, 1.0, 0, a_level)
    p_value = float(vote_p_value(wins, losses, concentration))
    low, high = _vote_confidence_sequence(wins, losses, a_level, concentration)
    return AlwaysValid(wins / n, low, high, p_value, n, a_level)


def _vote_confidence_sequence(wins: int, losses: int, alpha: float, concentration: float) -> tuple[float, float]:
    """Every win rate p whose mixture likelihood ratio against p is below 1/alpha: an interval
    around W/n (the log-likelihood is concave in p and the mixture never beats its maximum)."""
    bound = math.log(1.0 / alpha)

    def inside(p: float) -> float:
        return bound - float(vote_log_likelihood_ratio(wins, losses, concentration, null=p))

    centre = wins / (wins + losses)
    # A lopsided count (206 wins, 1 loss) keeps rates within 1e-16 of 0 or 1 inside the sequence:
    # the bound is then the end itself (brentq needs a sign change to search for it).
    floor, ceiling = 1e-300, 1.0 - 1e-16
    low = 0.0 if wins == 0 or inside(floor) > 0 else optimize.brentq(inside, floor, centre, xtol=1e-12)
    high = 1.0 if losses == 0 or inside(ceiling) > 0 else optimize.brentq(inside, centre, ceiling, xtol=1e-12)
    return float(low), float(high)


@functools.lru_cache(maxsize=256)
def sequential_votes_needed(win_rate: float = 0.6, alpha: float = 0.05, power: float = 0.8) -> int:
    """Decisive votes by which :func:`vote_test` (tuned to ``win_rate``) has found a true ``win_rate``
    with probability ``power``, counting a look after every vote.

    Exact: the distribution of wins among the experiments still running is carried forward one
    vote at a time (those whose ratio reached 1/alpha stop), until the share stopped on the
    effect's side reaches ``power``. 0.6 at alpha 0.05 and 80% power: about 310 (a single look
    at the end needs 194, see :func:`engine.power.decisive_votes_needed`).
    """
    p1 = check_win_rate(win_rate)
    threshold = math.log(1.0 / check_alpha(alpha))
    target = check_power(power)
    concentration = vote_mixture_concentration(p1)
    lowest = 0  # the wins that mass[0] stands for
    mass = np.ones(1)
    detected = 0.0
    n = 0
    while True:
        n += 1
        spread = np.zeros(mass.size + 1)
        spread[:-1] += mass * (1.0 - p1)
        spread[1:] += mass * p1
        wins = np.arange(lowest, lowest + spread.size)
        stopped = vote_log_likelihood_ratio(wins, n - wins, concentration) >= threshold
        right_side = (wins > n / 2) if p1 > 0.5 else (wins < n / 2)
        detected += float(spread[stopped & right_side].sum())
        if detected >= target:
            return n
        # The ratio is convex in the wins and symmetric about n/2, so the experiments still
        # running hold an interval of win counts: keep only that stretch.
        running = np.flatnonzero(~stopped)
        if not running.size:  # unreachable for power < 1 (the test's power tends to 1)
            return n
        mass = spread[running[0] : running[-1] + 1]
        lowest += int(running[0])


# --- scores: the sequential t-test ---------------------------------------------------------


def t_mixture_log_bayes_factor(t: ArrayLike, n: ArrayLike, mixture_sd: float = SCORE_MIXTURE_SD) -> NDArray[np.float64]:
    """log M_n of the sequential t-test for a t statistic from n units (vectorised; n >= 2).

    An infinite t (every unit the same, not zero) gives the limit ((n - 1)/2) log(1 + n tau^2).
    """
    t_, n_ = np.asarray(t, dtype=float), np.asarray(n, dtype=float)
    k = 1.0 + n_ * mixture_sd * mixture_sd
    nu = n_ - 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.log1p(t_ * t_ / nu) - np.log1p(t_ * t_ / (nu * k))
    ratio = np.where(np.isinf(t_), np.log(k), ratio)
    return np.asarray(-0.5 * np.log(k) + 0.5 * n_ * ratio, dtype=float)


def t_mixture_boundary(n: ArrayLike, alpha: float, mixture_sd: float = SCORE_MIXTURE_SD) -> NDArray[np.float64]:
    """The |t| at which the sequential t-test's ratio reaches 1/alpha after n units (inf: not reachable yet).

    Solves (1 + u) / (1 + u/k) = c for u = t^2 / nu, with k = 1 + n tau^2 and
    c = exp((2/n) (log(1/alpha) + log(k)/2)).
    """
    n_ = np.asarray(n, dtype=float)
    k = 1.0 + n_ * mixture_sd * mixture_sd
    c = np.exp((2.0 / n_) * (math.log(1.0 / alpha) + 0.5 * np.log(k)))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(c < k, (c - 1.0) / (1.0 - c / k), np.inf)
    return np.asarray(np.sqrt(u * (n_ - 1.0)), dtype=float)


def _mixture_p_value(
    mean: NDArray[np.float64],
    sd: NDArray[np.float64],
    skew: NDArray[np.float64],
    n: NDArray[np.float64],
    mixture_sd: float,
) -> NDArray[np.float64]:
    """The skewness-corrected sequential t-test's p-value min(1, 1/M_n) from summary statistics (n >= 2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(sd > 0, mean / (sd / np.sqrt(n)), np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
    finite = np.isfinite(t)
    u = np.where(finite, hall_transform(np.where(finite, t, 0.0), skew, n), t)
    return np.asarray(np.minimum(1.0, np.exp(-t_mixture_log_bayes_factor(u, n, mixture_sd))), dtype=float)


def mean_test(units: ArrayLike, alpha: float = 0.05, mixture_sd: float = SCORE_MIXTURE_SD) -> AlwaysValid:
    """Always-valid p-value of "mean = 0" and confidence sequence for the mean of ``units`` (one value per
    prompt, e.g. per-prompt mean differences against the baseline). Fewer than 2 units: no test (p = 1)."""
    a_level = check_alpha(alpha)
    data = np.asarray(units, dtype=float)
    n = data.size
    if n == 0:
        return AlwaysValid(math.nan, -math.inf, math.inf, 1.0, 0, a_level)
    mean = float(data.mean())
    if n == 1:
        return AlwaysValid(mean, -math.inf, math.inf, 1.0, 1, a_level)
    sd, skew = float(data.std(ddof=1)), skewness(data)
    p_value = float(_mixture_p_value(np.array(mean), np.array(sd), np.array(skew), np.array(float(n)), mixture_sd))
    # Every mean mu whose test is not rejected: |g(t(mu))| below the boundary, g Hall's transformation.
    edge = float(t_mixture_boundary(n, a_level, mixture_sd))
    if not math.isfinite(edge):
        return AlwaysValid(mean, -math.inf, math.inf, p_value, n, a_level)
    se = sd / math.sqrt(n)
    low = mean - float(hall_inverse(edge, skew, n)) * se
    high = mean - float(hall_inverse(-edge, skew, n)) * se
    return AlwaysValid(mean, low, high, p_value, n, a_level)


def running_mean_p_values(units: ArrayLike, mixture_sd: float = SCORE_MIXTURE_SD) -> NDArray[np.float64]:
    """:func:`mean_test`'s p-value after each unit of each sequence: rows are sequences, columns arrivals.

    Column i is the test of the first i + 1 units (1.0 for the first, where there is no test).
    What a team that looks after every prompt would see; vectorised for simulations.
    """
    data = np.atleast_2d(np.asarray(units, dtype=float))
    shifted = data - data[:, :1]  # moments are shift-invariant; shifting keeps the sums from cancelling
    n = np.arange(1, data.shape[1] + 1, dtype=float)
    s1, s2, s3 = (np.cumsum(shifted**k, axis=1) for k in (1, 2, 3))
    m = s1 / n
    m2 = np.maximum(s2 / n - m * m, 0.0)
    m3 = s3 / n - 3.0 * m * s2 / n + 2.0 * m**3
    with np.errstate(divide="ignore", invalid="ignore"):
        g1 = np.where(m2 > 0, m3 / np.where(m2 > 0, m2, 1.0) ** 1.5, 0.0)
        skew = np.where(n >= 3, g1 * np.sqrt(n * (n - 1.0)) / np.maximum(n - 2.0, 1.0), 0.0)
    sd = np.sqrt(m2 * n / np.maximum(n - 1.0, 1.0))
    mean = m + data[:, :1]
    p_value = _mixture_p_value(mean, sd, skew, np.broadcast_to(np.maximum(n, 2.0), mean.shape), mixture_sd)
    p_value[:, 0] = 1.0
    return p_value


def sequential_prompts_needed(
    sd: float, difference: float, alpha: float = 0.05, power: float = 0.8, mixture_sd: float = SCORE_MIXTURE_SD
) -> int:
    """Prompts after which :func:`mean_test` finds a true mean ``difference`` (per-prompt differences with
    standard deviation ``sd``, normal) with probability at least ``power``.

    The smallest n at which the test, looked at only then, rejects with that probability: the
    noncentral t distribution of T_n beyond the boundary of :func:`t_mixture_boundary`. Looking
    after every prompt can only stop earlier, so this is an upper bound (by about 10-15% in
    simulations: a difference of sd/2 needs 65 prompts this way; a single look at the end
    needs 34).
    """
    fewest = prompts_needed(sd, difference, alpha, power)  # checks the arguments; never more powerful
    a_level, target = check_alpha(alpha), check_power(power)
    if sd == 0.0:  # every prompt differs by the same amount: t is infinite from 2 prompts on
        n = 2
        while not math.isfinite(float(t_mixture_boundary(n, a_level, mixture_sd))):
            n += 1
        return n
    effect = abs(difference) / sd
    block = max(64, fewest)
    start = fewest
    while True:
        sizes = np.arange(start, start + block, dtype=float)
        edge = t_mixture_boundary(sizes, a_level, mixture_sd)
        reachable = np.isfinite(edge)
        # P(T_n >= edge) for T_n noncentral t with n - 1 degrees of freedom and shift sqrt(n) effect.
        reach = np.where(
            reachable, 1.0 - special.nctdtr(sizes - 1.0, np.sqrt(sizes) * effect, np.where(reachable, edge, 0.0)), 0.0
        )
        hits = np.flatnonzero(reach >= target)
        if hits.size:
            return int(sizes[hits[0]])
        start += block
        block *= 2
