"""Always-valid tests, simulated: a team that looks after every vote (or prompt) and stops at the
first "significant" result must not find more false positives than alpha.

Every simulation is seeded and vectorised: 4,000 sequences of up to 500 votes or 300 prompts,
the test's p-value after each arrival. The Monte-Carlo standard error of a 5% rate is 0.35%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from engine.errors import SteerLabError
from engine.sequential import (
    SCORE_MIXTURE_SD,
    mean_test,
    running_mean_p_values,
    t_mixture_boundary,
    t_mixture_log_bayes_factor,
    vote_log_likelihood_ratio,
    vote_mixture_concentration,
    vote_p_value,
    vote_test,
)
from engine.stats import MIN_DECISIVE_VOTES, Z95, wilson_interval

ALPHA = 0.05
SEQUENCES = 4000
VOTES = 500
PROMPTS = 300


def _tallies(win_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wins and losses after each decisive vote of each simulated sequence, and the vote counts."""
    won = np.random.default_rng(seed).random((SEQUENCES, VOTES)) < win_rate
    wins = np.cumsum(won, axis=1)
    n = np.arange(1, VOTES + 1)
    return wins, n - wins, n


def _first_rejection(rejected: np.ndarray) -> np.ndarray:
    """The look (1-based) at which each sequence first rejected; a huge number if it never did."""
    return np.where(rejected.any(axis=1), rejected.argmax(axis=1) + 1, 10**9)


# --- votes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("effect", [0.6, 0.55, 0.8])
def test_vote_test_checked_after_every_vote_keeps_false_positives_below_alpha(effect: float) -> None:
    wins, losses, _ = _tallies(0.5, seed=1)
    p = vote_p_value(wins, losses, vote_mixture_concentration(effect))
    false_positives = np.mean((p <= ALPHA).any(axis=1))
    assert false_positives <= ALPHA, f"{false_positives:.4f}"


def test_a_fixed_sample_test_checked_after_every_vote_inflates_false_positives() -> None:
    """What the always-valid test prevents: the same sequences, the usual two-sided z-test (the one
    the Wilson interval inverts), looked at after every vote from the fifth on."""
    wins, _, n = _tallies(0.5, seed=1)
    z = (wins - n / 2) / np.sqrt(n / 4)
    looks = np.abs(z[:, MIN_DECISIVE_VOTES - 1 :]) >= Z95
    assert np.mean(looks.any(axis=1)) > 0.15
    assert np.mean(looks[:, -1]) < 0.07  # one look at the end is fine


def test_vote_test_finds_a_65_percent_win_rate_in_most_sequences_by_500_votes() -> None:
    wins, losses, _ = _tallies(0.65, seed=2)
    p = vote_p_value(wins, losses, vote_mixture_concentration(0.6))
    found = (p <= ALPHA) & (wins > losses)
    assert np.mean(found.any(axis=1)) > 0.95
    assert np.median(_first_rejection(found)) < 200


@pytest.mark.parametrize("truth", [0.5, 0.62, 0.3])
def test_vote_confidence_sequence_covers_the_truth_at_every_look(truth: float) -> None:
    """The confidence sequence holds the true win rate at all 500 looks at once in >= 95% of sequences:
    it is every p whose mixture ratio against p stays below 1/alpha."""
    wins, losses, _ = _tallies(truth, seed=3)
    ratio = vote_log_likelihood_ratio(wins, losses, vote_mixture_concentration(0.6), null=truth)
    assert np.mean((ratio >= math.log(1 / ALPHA)).any(axis=1)) <= ALPHA
    # The same sequences' 95% Wilson intervals, read at every look, miss the truth somewhere far more often.
    n = wins + losses
    centre = (wins + Z95**2 / 2) / (n + Z95**2)
    half = Z95 * np.sqrt(wins * losses / n + Z95**2 / 4) / (n + Z95**2)
    by_engine = wilson_interval(int(wins[0, 99]), 100)
    assert (centre[0, 99] - half[0, 99], centre[0, 99] + half[0, 99]) == pytest.approx((by_engine.low, by_engine.high))
    assert np.mean((np.abs(centre - truth) > half)[:, MIN_DECISIVE_VOTES - 1 :].any(axis=1)) > 0.2


def test_vote_test_from_counts() -> None:
    result = vote_test(60, 40)
    concentration = vote_mixture_concentration(0.6)
    assert concentration == pytest.approx(12.0)  # sd of Beta(12, 12) = 1 / (2 sqrt 25) = 0.1 = 0.6 - 0.5
    # log M = log B(72, 52) - log B(12, 12) + 100 log 2, by hand through the gamma function.
    log_m = (
        math.lgamma(72) + math.lgamma(52) - math.lgamma(124) - 2 * math.lgamma(12) + math.lgamma(24) + 100 * math.log(2)
    )
    assert result.p_value == pytest.approx(min(1.0, math.exp(-log_m)))
    assert (result.value, result.n, result.alpha) == (0.6, 100, 0.05)
    # The ends of the confidence sequence are where the ratio against them reaches 1/alpha exactly.
    for edge in (result.low, result.high):
        assert float(vote_log_likelihood_ratio(60, 40, concentration, null=edge)) == pytest.approx(math.log(20))
    wilson = wilson_interval(60, 100)
    assert result.low < wilson.low < 0.6 < wilson.high < result.high  # the price of looking at every vote
    assert result.describe("decisive votes").endswith(
        f"always-valid 95% (p = {result.p_value:.3f}; 100 decisive votes)"
    )
    none = vote_test(0, 0)
    assert (none.n, none.low, none.high, none.p_value) == (0, 0.0, 1.0, 1.0) and math.isnan(none.value)
    swept = vote_test(0, 40)
    assert swept.low == 0.0 and swept.high < 0.5 and swept.p_value < 0.05
    assert vote_test(40, 0).high == 1.0
    with pytest.raises(SteerLabError, match="win rate"):
        vote_test(3, 4, win_rate=0.5)
    with pytest.raises(SteerLabError, match="alpha"):
        vote_test(3, 4, alpha=0.7)


# --- scores --------------------------------------------------------------------------------


def _units(shape: str, seed: int, shift: float = 0.0) -> np.ndarray:
    """Per-prompt mean differences (mean 0 + shift): a prompt effect plus the mean of 3 sample terms."""
    rng = np.random.default_rng(seed)
    size = (SEQUENCES, PROMPTS)
    if shape == "normal":
        return rng.normal(0.0, 1.0, size) + shift
    if shape == "exponential":  # skewness 1.4
        return rng.exponential(1.0, size) + rng.exponential(1.0, (*size, 3)).mean(axis=2) - 2.0 + shift
    # log-normal: prompt factor LogNormal(0, 0.5) times sample factors LogNormal(0, 0.25), skewness 1.8
    scores = rng.lognormal(0.0, 0.5, (*size, 1)) * rng.lognormal(0.0, 0.25, (*size, 3))
    return scores.mean(axis=2) - math.exp(0.5**2 / 2 + 0.25**2 / 2) + shift


@pytest.mark.parametrize("shape", ["normal", "exponential", "log-normal"])
def test_score_test_checked_after_every_prompt_keeps_false_positives_below_alpha(shape: str) -> None:
    units = _units(shape, seed=4)
    p = running_mean_p_values(units)
    false_positives = np.mean((p <= ALPHA).any(axis=1))
    assert false_positives <= ALPHA, f"{shape}: {false_positives:.4f}"
    # A fixed-sample t-test looked at after every prompt, on the same sequences: 46-52%.
    n = np.arange(2, PROMPTS + 1)
    cumulative = np.cumsum(units, axis=1)[:, 1:]
    mean = cumulative / n
    sd = np.sqrt((np.cumsum(units**2, axis=1)[:, 1:] - n * mean**2) / (n - 1))
    naive = 2 * special.stdtr(n - 1, -np.abs(mean / (sd / np.sqrt(n))))
    assert np.mean((naive <= ALPHA).any(axis=1)) > 0.15


def test_score_test_finds_a_half_sd_difference_in_most_sequences_by_120_prompts() -> None:
    units = _units("normal", seed=5, shift=0.5)[:, :120]
    p = running_mean_p_values(units)
    found = (p <= ALPHA) & (np.cumsum(units, axis=1) > 0)
    assert np.mean(found.any(axis=1)) > 0.95


def test_running_p_values_are_the_test_of_the_prompts_so_far() -> None:
    units = _units("log-normal", seed=6, shift=0.2)[:3, :40]
    running = running_mean_p_values(units)
    assert np.all(running[:, 0] == 1.0)
    for row, p_values in zip(units, running, strict=True):
        for n in (2, 3, 10, 40):
            assert p_values[n - 1] == pytest.approx(mean_test(row[:n]).p_value, rel=1e-9, abs=1e-12)


def test_mean_test_confidence_sequence_is_the_inverted_test() -> None:
    """The confidence sequence is every mean whose test is not rejected: shifting the data so that 0
    sits on an end gives p = alpha exactly (spread and skewness do not move with a shift)."""
    units = np.random.default_rng(7).exponential(1.0, 60) - 0.6
    result = mean_test(units)
    assert result.low < result.value < result.high and result.n == 60
    for edge in (result.low, result.high):
        assert mean_test(units - edge).p_value == pytest.approx(ALPHA, rel=1e-6)
    # Normal-theory parts by hand: the boundary solves M_n = 1/alpha.
    n = np.arange(2, 200)
    edge_t = t_mixture_boundary(n, ALPHA)
    reachable = np.isfinite(edge_t)
    assert reachable[-1] and not reachable[0]  # 2 prompts can never reach 1/alpha
    assert t_mixture_log_bayes_factor(edge_t[reachable], n[reachable]) == pytest.approx(math.log(1 / ALPHA))
    k = 1 + 50 * SCORE_MIXTURE_SD**2  # n = 50, t = 3: Rouder et al.'s formula with g = tau^2
    by_hand = k**-0.5 * ((1 + 9 / 49) / (1 + 9 / (49 * k))) ** 25
    assert float(t_mixture_log_bayes_factor(3.0, 50)) == pytest.approx(math.log(by_hand))


def test_mean_test_edge_cases() -> None:
    assert mean_test([]).n == 0 and math.isnan(mean_test([]).value)
    one = mean_test([0.4])
    assert (one.value, one.p_value, one.low, one.high) == (0.4, 1.0, -math.inf, math.inf)
    # Every prompt differing by the same amount: t is infinite, the ratio its limit ((n - 1)/2) log(1 + n tau^2).
    same = mean_test([0.2] * 30)
    assert same.p_value == pytest.approx(math.exp(-14.5 * math.log(1 + 30 * SCORE_MIXTURE_SD**2)))
    assert (same.low, same.high) == pytest.approx((0.2, 0.2))
    assert mean_test([0.0] * 5).p_value == 1.0


def test_lopsided_counts_keep_a_confidence_sequence_that_reaches_the_end() -> None:
    # 206 wins and 1 loss (a clearly better variant in a big store) once made the root search fail.
    for wins, losses in ((206, 1), (1, 206), (700, 3), (5, 0), (0, 5)):
        result = vote_test(wins, losses)
        assert 0.0 <= result.low <= result.value <= result.high <= 1.0
    assert vote_test(206, 1).high == 1.0 and vote_test(1, 206).low < 1e-9
