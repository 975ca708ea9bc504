"""Pairwise statistics against hand-computed and textbook values."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy.optimize import brentq, minimize

from engine.ranking import (
    LENGTH_STEP,
    MIN_DECISIVE_BATTLES,
    PRIOR_SD,
    Battle,
    bradley_terry_from_counts,
    bradley_terry_with_intervals,
    cohen_kappa,
    fit_bradley_terry,
    fit_bradley_terry_counts,
    fleiss_kappa,
    length_controlled_ratings,
)

LN10 = math.log(10)


def test_two_variant_bradley_terry_without_prior_reduces_to_the_log_odds() -> None:
    # A wins 6, ties 2 (half a win each way), loses 2: p = 7/10.
    battles = [Battle("A", "B", 1.0)] * 6 + [Battle("A", "B", 0.5)] * 2 + [Battle("B", "A", 1.0)] * 2
    ratings = fit_bradley_terry(battles, ["A", "B"], prior_sd=math.inf)
    expected_gap = 400 * math.log10(0.7 / 0.3)
    assert ratings["A"] - ratings["B"] == pytest.approx(expected_gap, abs=1e-3)
    assert (ratings["A"] + ratings["B"]) / 2 == pytest.approx(1000)


def two_player_posterior_mode(wins: float, votes: int, prior_sd: float = PRIOR_SD) -> float:
    """A's rating when A won ``wins`` of ``votes`` against B, each rating ~ N(1000, prior_sd²).

    By symmetry the mode is A = 1000 + 400·b, B = 1000 − 400·b. With tau = prior_sd/400, the
    log posterior in b is wins·log s(2·ln10·b) + (votes − wins)·log(1 − s(2·ln10·b)) − b²/tau²
    (s the logistic function; one b²/(2·tau²) from each player's prior); its derivative is zero
    where ln10·(wins − votes·s(2·ln10·b)) = b/tau², solved here by bracketing.
    """
    tau = prior_sd / 400

    def slope(b: float) -> float:
        return LN10 * (wins - votes / (1 + math.exp(-2 * LN10 * b))) - b / tau**2

    return 1000 + 400 * brentq(slope, -10, 10, xtol=1e-14)


def test_one_vote_gives_finite_symmetric_ratings_at_the_posterior_mode() -> None:
    # By hand (see two_player_posterior_mode): ln10·(1 − s(2·ln10·b)) = b gives b ≈ 0.364, so
    # one win puts A about 145 points above 1000 and B as far below: a 290-point gap, not infinity.
    expected = two_player_posterior_mode(1, 1)
    assert expected == pytest.approx(1145.4, abs=0.1)
    ratings = fit_bradley_terry([Battle("A", "B", 1.0)], ["A", "B"])
    assert ratings["A"] == pytest.approx(expected, abs=1e-6)
    assert ratings["B"] == pytest.approx(2000 - expected, abs=1e-6)
    # The same vote told the other way round (B on the left, the right side won) is the same battle.
    assert fit_bradley_terry([Battle("B", "A", 0.0)], ["A", "B"]) == pytest.approx(ratings, abs=1e-9)
    # A's win turned into B's mirrors the ratings.
    mirrored = fit_bradley_terry([Battle("B", "A", 1.0)], ["A", "B"])
    assert mirrored["B"] == pytest.approx(ratings["A"], abs=1e-9)
    # With intervals: finite, shown, and labelled "needs more votes".
    with_intervals = {r.player: r for r in bradley_terry_with_intervals([Battle("A", "B", 1.0)], ["A", "B"], rounds=50)}
    for r in with_intervals.values():
        assert math.isfinite(r.rating) and math.isfinite(r.low) and math.isfinite(r.high)
        assert r.decisive == 1 and r.needs_more_votes and not r.enough_votes
        assert f"needs more votes: 1 of {MIN_DECISIVE_BATTLES} decisive battles" in r.describe()
    assert with_intervals["A"].rating == pytest.approx(expected, abs=1e-6)


def test_prior_mode_matches_the_hand_solution_with_ties_and_a_chosen_prior() -> None:
    # 7 wins of 10 (ties as halves): the posterior mode for two priors, against the 1-D equation.
    battles = [Battle("A", "B", 1.0)] * 6 + [Battle("A", "B", 0.5)] * 2 + [Battle("B", "A", 1.0)] * 2
    for prior_sd in (200.0, PRIOR_SD):
        fitted = fit_bradley_terry(battles, ["A", "B"], prior_sd=prior_sd)
        assert fitted["A"] == pytest.approx(two_player_posterior_mode(7, 10, prior_sd), abs=1e-6)
    # A tighter prior pulls harder towards 1000; the MLE gap (147 points) is the upper bound.
    gap = {sd: fit_bradley_terry(battles, ["A", "B"], prior_sd=sd)["A"] for sd in (200.0, 400.0, math.inf)}
    assert gap[200.0] < gap[400.0] < gap[math.inf] == pytest.approx(1000 + 200 * math.log10(7 / 3), abs=1e-3)


def test_the_prior_fades_with_many_votes() -> None:
    # The same 60% share from 10, 100 and 10,000 votes: the pull towards 1000 shrinks to nothing.
    pulls = []
    for votes in (10, 100, 10_000):
        counts = {("A", "B", 1.0): votes * 6 // 10, ("B", "A", 1.0): votes * 4 // 10}
        mle = fit_bradley_terry_counts(counts, ["A", "B"], prior_sd=math.inf)["A"]
        mode = fit_bradley_terry_counts(counts, ["A", "B"])["A"]
        assert mle == pytest.approx(1000 + 200 * math.log10(1.5), abs=1e-6)
        pulls.append(mle - mode)
    assert pulls[0] > pulls[1] > pulls[2] > 0
    assert pulls[2] < 0.05  # of a 70-point rating above 1000
    # Three players, thousands of votes: every rating within half a point of the MLE.
    counts = {
        ("A", "B", 1.0): 1200,
        ("B", "A", 1.0): 800,
        ("B", "C", 1.0): 1100,
        ("C", "B", 1.0): 900,
        ("A", "C", 1.0): 1300,
        ("C", "A", 1.0): 700,
        ("A", "C", 0.5): 200,
    }
    many_mle = fit_bradley_terry_counts(counts, ["A", "B", "C"], prior_sd=math.inf)
    many_mode = fit_bradley_terry_counts(counts, ["A", "B", "C"])
    assert many_mode == pytest.approx(many_mle, abs=0.5)


def test_needs_more_votes_follows_the_minimum_of_decisive_battles() -> None:
    # "a" has 9 decisive battles and 5 ties, "b" 12 decisive, "c" 3; ties never count.
    counts = {("a", "b", 1.0): 5, ("b", "a", 1.0): 4, ("a", "b", 0.5): 5, ("b", "c", 1.0): 3}
    ratings = {r.player: r for r in bradley_terry_from_counts(counts, ["a", "b", "c", "d"], rounds=50)}
    assert [ratings[p].decisive for p in "abcd"] == [9, 12, 3, 0]
    assert [ratings[p].needs_more_votes for p in "abcd"] == [True, False, True, True]
    assert all(math.isfinite(ratings[p].rating) for p in "abc"), "flagged ratings are still shown"
    assert math.isnan(ratings["d"].rating) and "no votes yet" in ratings["d"].describe()
    assert "needs more votes" not in ratings["b"].describe()
    # An experiment's own minimum.
    lenient = {r.player: r for r in bradley_terry_from_counts(counts, ["a", "b", "c", "d"], rounds=50, min_decisive=3)}
    assert [lenient[p].needs_more_votes for p in "abcd"] == [False, False, False, True]


def test_bradley_terry_orders_players_and_bootstrap_is_seeded() -> None:
    battles = (
        [Battle("A", "B", 1.0)] * 7
        + [Battle("B", "A", 1.0)] * 3
        + [Battle("B", "C", 1.0)] * 7
        + [Battle("C", "B", 1.0)] * 3
        + [Battle("A", "C", 1.0)] * 8
        + [Battle("C", "A", 1.0)] * 2
    )
    first = bradley_terry_with_intervals(battles, ["A", "B", "C"], rounds=200, seed=5)
    again = bradley_terry_with_intervals(battles, ["A", "B", "C"], rounds=200, seed=5)
    assert first == again
    by_name = {r.player: r for r in first}
    assert by_name["A"].rating > by_name["B"].rating > by_name["C"].rating
    for r in first:
        assert r.low <= r.rating <= r.high and r.battles == 20
    # A player that won every battle still gets a finite rating, with or without the prior.
    assert math.isfinite(fit_bradley_terry([Battle("A", "B", 1.0)] * 3, ["A", "B"])["A"])
    assert math.isfinite(fit_bradley_terry([Battle("A", "B", 1.0)] * 3, ["A", "B"], prior_sd=math.inf)["A"])


def test_cohen_kappa_textbook_table() -> None:
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> kappa = 0.4.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_fleiss_kappa_textbook_table() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    items = [[category for category, count in enumerate(row) for _ in range(count)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_with_two_three_and_four_raters_per_item() -> None:
    # Each item's agreement uses its own number of raters m: P_i = (sum of squared counts − m) / (m(m − 1)).
    #   item 1, 2 raters [a, a]:       (4 − 2) / 2        = 1
    #   item 2, 3 raters [a, a, b]:    (4 + 1 − 3) / 6    = 1/3
    #   item 3, 4 raters [a, b, b, c]: (1 + 4 + 1 − 4)/12 = 1/6
    # mean agreement = (1 + 1/3 + 1/6) / 3 = 1/2. Category shares pooled over all 9 labels:
    # a 5/9, b 3/9, c 1/9, so chance agreement = (25 + 9 + 1) / 81 = 35/81 and
    # kappa = (1/2 − 35/81) / (1 − 35/81) = (5.5/81) / (46/81) = 11/92 ≈ 0.1196.
    items = [["a", "a"], ["a", "a", "b"], ["a", "b", "b", "c"]]
    assert fleiss_kappa(items) == pytest.approx(11 / 92, abs=1e-12)
    # An item with one rater says nothing about agreement and is left out.
    assert fleiss_kappa([*items, ["c"]]) == pytest.approx(11 / 92, abs=1e-12)
    assert math.isnan(fleiss_kappa([["a"], ["b"]]))


def test_cohen_kappa_small_hand_example() -> None:
    # Six pairs, verdicts L(ower won), H(igher won), T(ie): agreement on pairs 1, 3, 4, 5 -> 4/6.
    # Both raters used L 3 times, H 2, T 1: chance agreement (9 + 4 + 1)/36 = 14/36, so
    # kappa = (24/36 − 14/36) / (22/36) = 10/22 = 5/11.
    first = ["L", "L", "H", "T", "L", "H"]
    second = ["L", "H", "H", "T", "L", "L"]
    assert cohen_kappa(first, second) == pytest.approx(5 / 11, abs=1e-12)
    assert cohen_kappa(second, first) == pytest.approx(5 / 11, abs=1e-12)
    assert math.isnan(cohen_kappa(["L", "L"], ["L", "L"])), "undefined when every label is the same"


# --- length control ----------------------------------------------------------------------------


def length_votes(
    n: int, seed: int, length_logit: float, longer: str = "A"
) -> list[tuple[str, str, float, int, int, int]]:
    """Votes between two equally good variants where raters favour the longer output.

    ``longer``'s outputs are 20–60 tokens, the other's 10–50 (so it is usually, not always,
    longer); sides are drawn at random; the longer output wins with probability
    s(length_logit · d/0.3), d the normalised length difference. Aggregated into rows with counts.
    """
    rng = np.random.default_rng(seed)
    a_tokens = rng.integers(20, 61, n) if longer == "A" else rng.integers(10, 51, n)
    b_tokens = rng.integers(10, 51, n) if longer == "A" else rng.integers(20, 61, n)
    a_left = rng.random(n) < 0.5
    difference = (a_tokens - b_tokens) / (a_tokens + b_tokens)
    a_wins = rng.random(n) < 1 / (1 + np.exp(-length_logit * difference / 0.3))
    tie = rng.random(n) < 0.1
    rows: Counter[tuple[str, str, float, int, int]] = Counter()
    for i in range(n):
        outcome = 0.5 if tie[i] else float(a_wins[i])
        if a_left[i]:
            rows[("A", "B", outcome, int(a_tokens[i]), int(b_tokens[i]))] += 1
        else:
            rows[("B", "A", 1.0 - outcome, int(b_tokens[i]), int(a_tokens[i]))] += 1
    return [(*key, count) for key, count in sorted(rows.items())]


def test_length_control_separates_a_length_preference_from_quality() -> None:
    rows = length_votes(3000, seed=1, length_logit=1.5)
    result = length_controlled_ratings(rows, ["A", "B"], rounds=300, seed=0)
    raw = {r.player: r for r in result.raw}
    controlled = {r.player: r for r in result.controlled}
    # With two players the ratings are 1000 ± x, so 1000 inside A's interval means "no
    # detectable difference". Raw: A (longer) is clearly ahead, its interval entirely above 1000.
    assert raw["A"].rating - raw["B"].rating > 60
    assert raw["A"].low > 1000 and raw["A"].low > raw["B"].high
    # Controlled: no difference beyond noise, and far closer than raw.
    assert abs(controlled["A"].rating - controlled["B"].rating) < 20
    assert controlled["A"].low < 1000 < controlled["A"].high
    # The length coefficient is positive, its interval well above 0 (the simulated effect, 1.5
    # logits per 0.3 of normalised difference, is diluted by the 10% ties that ignore length).
    c = result.coefficient
    assert 0.5 < c.low < c.value < c.high
    assert c.n == sum(n for *_, a, b, n in rows if a != b)
    assert "favour the longer output" in result.describe()
    # Raw ratings are the plain Bradley–Terry ratings of the same votes.
    plain: Counter[tuple[str, str, float]] = Counter()
    for first, second, outcome, _, _, n in rows:
        plain[(first, second, outcome)] += n
    assert [r.rating for r in result.raw] == pytest.approx(
        [r.rating for r in bradley_terry_from_counts(plain, ["A", "B"], rounds=10)], abs=1e-9
    )


def test_length_control_changes_nothing_when_lengths_are_equal() -> None:
    rows = [(first, second, outcome, 30, 30, n) for first, second, outcome, _, _, n in length_votes(500, 2, 1.0)]
    rows += [("A", "C", 1.0, 12, 12, 7), ("C", "B", 0.0, 0, 0, 3)]
    result = length_controlled_ratings(rows, ["A", "B", "C"], rounds=200, seed=3)
    for raw, controlled in zip(result.raw, result.controlled, strict=True):
        assert (controlled.player, controlled.battles, controlled.decisive) == (raw.player, raw.battles, raw.decisive)
        assert (controlled.rating, controlled.low, controlled.high) == pytest.approx(
            (raw.rating, raw.low, raw.high), abs=1e-9
        )
    assert result.coefficient.n == 0 and math.isnan(result.coefficient.value)
    assert "not measurable" in result.describe()


def test_length_control_does_not_depend_on_which_side_is_listed_first() -> None:
    rows = length_votes(800, seed=4, length_logit=1.0)
    swapped = [(second, first, 1.0 - outcome, b, a, n) for first, second, outcome, a, b, n in rows]
    one = length_controlled_ratings(rows, ["A", "B"], rounds=100, seed=0)
    other = length_controlled_ratings(swapped, ["A", "B"], rounds=100, seed=0)
    assert [r.rating for r in one.controlled] == pytest.approx([r.rating for r in other.controlled], abs=1e-9)
    assert one.coefficient.value == pytest.approx(other.coefficient.value, abs=1e-12)


def test_length_controlled_fit_matches_an_independent_per_vote_fit() -> None:
    # Three players, votes one row each, fitted by scipy's L-BFGS on the same log posterior:
    # N(0, (prior_sd/400)^2) on each rating in units of 400 points, N(0, (ln10 · prior_sd/400)^2)
    # on the coefficient of the length feature (rounded to LENGTH_STEP, divided by its RMS).
    rng = np.random.default_rng(7)
    players = ["A", "B", "C"]
    n = 600
    first, second = rng.integers(0, 3, n), rng.integers(0, 3, n)
    keep = first != second
    first, second = first[keep], second[keep]
    tokens_first, tokens_second = rng.integers(5, 40, len(first)), rng.integers(5, 40, len(first))
    raw_difference = (tokens_first - tokens_second) / (tokens_first + tokens_second)
    strength = np.array([0.4, 0.0, -0.3])
    logit = LN10 * (strength[first] - strength[second]) + 0.8 * raw_difference / 0.25
    outcome = (rng.random(len(first)) < 1 / (1 + np.exp(-logit))).astype(float)
    outcome[rng.random(len(first)) < 0.1] = 0.5
    rows = [
        (players[a], players[b], float(o), int(ta), int(tb), 1)
        for a, b, o, ta, tb in zip(first, second, outcome, tokens_first, tokens_second, strict=True)
    ]
    result = length_controlled_ratings(rows, players, rounds=20)

    feature = np.round(raw_difference / LENGTH_STEP) * LENGTH_STEP
    feature = feature / np.sqrt((feature**2).mean())
    rating_precision, coefficient_precision = (400 / PRIOR_SD) ** 2, (400 / (LN10 * PRIOR_SD)) ** 2

    def negative_log_posterior(params: np.ndarray) -> float:
        beta, gamma = params[:3], params[3]
        z = LN10 * (beta[first] - beta[second]) + gamma * feature
        log_likelihood = outcome * -np.logaddexp(0, -z) + (1 - outcome) * -np.logaddexp(0, z)
        prior = rating_precision * (beta**2).sum() / 2 + coefficient_precision * gamma**2 / 2
        return float(-log_likelihood.sum() + prior)

    fitted = minimize(negative_log_posterior, np.zeros(4), method="L-BFGS-B", options={"gtol": 1e-10}).x
    expected = 400 * fitted[:3] + 1000 - 400 * fitted[:3].mean()
    assert [r.rating for r in result.controlled] == pytest.approx(list(expected), abs=0.05)
    assert result.coefficient.value == pytest.approx(fitted[3], abs=1e-4)
