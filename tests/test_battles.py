"""The mapping from stored votes to battles, and the position-bias estimate, each checked directly."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from engine.battles import (
    HIGHER_WON,
    LOWER_WON,
    battle_of,
    battles_from_tallies,
    length_battles,
    outcome_of,
    pair_verdict,
    position_bias,
)
from engine.errors import SteerLabError
from engine.ranking import Battle, fit_bradley_terry_counts


def test_each_choice_maps_to_its_battle() -> None:
    # first = the variant shown on the left; the outcome is the left variant's share of the win.
    assert battle_of("X", "Y", "left") == Battle("X", "Y", 1.0)
    assert battle_of("X", "Y", "right") == Battle("X", "Y", 0.0)
    assert battle_of("X", "Y", "tie") == Battle("X", "Y", 0.5)
    assert battle_of("X", "Y", "both_bad") is None
    assert [outcome_of(c) for c in ("left", "right", "tie", "both_bad")] == [1.0, 0.0, 0.5, None]


def test_a_vote_for_the_right_side_is_a_win_for_the_variant_shown_there() -> None:
    # X was on the right in every vote and the right side won each time: X won them all.
    tallies = {("Y", "X", "right"): 4}
    battles = battles_from_tallies(tallies)
    assert battles.counts == Counter({("Y", "X", 0.0): 4})
    ratings = fit_bradley_terry_counts(battles.counts, ["X", "Y"])
    assert ratings["X"] > 1000 > ratings["Y"]
    # The same result told with X on the left: the same ratings.
    mirrored = battles_from_tallies({("X", "Y", "left"): 4})
    assert fit_bradley_terry_counts(mirrored.counts, ["X", "Y"]) == pytest.approx(ratings, abs=1e-9)
    # And a vote for the left side with X on the right is a loss for X.
    lost = fit_bradley_terry_counts(battles_from_tallies({("Y", "X", "left"): 4}).counts, ["X", "Y"])
    assert lost["X"] < 1000 < lost["Y"]


def test_ties_count_half_and_both_bad_votes_are_counted_apart() -> None:
    tallies = {
        ("A", "B", "left"): 3,
        ("B", "A", "left"): 2,
        ("A", "B", "tie"): 4,
        ("A", "B", "both_bad"): 5,
        ("C", "A", "both_bad"): 1,
    }
    battles = battles_from_tallies(tallies)
    assert battles.counts == Counter({("A", "B", 1.0): 3, ("B", "A", 1.0): 2, ("A", "B", 0.5): 4})
    assert battles.both_bad == 6
    assert battles.both_bad_by_variant == Counter({"A": 6, "B": 5, "C": 1})
    # Ties pull towards an even split: A's 3 wins, 2 losses and 4 ties are 5 wins of 9 (no prior).
    ratings = fit_bradley_terry_counts(battles.counts, ["A", "B"], prior_sd=math.inf)
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(5 / 4), abs=1e-6)
    # Both-bad votes change no rating: with or without them, the same fit.
    without = battles_from_tallies({k: n for k, n in tallies.items() if k[2] != "both_bad"})
    assert without.counts == battles.counts and without.both_bad == 0


def test_length_rows_keep_lengths_with_their_sides_and_drop_both_bad() -> None:
    rows = [
        ("A", "B", "left", 30, 10, 2),
        ("B", "A", "right", 12, 40, 1),
        ("A", "B", "tie", 5, 5, 3),
        ("A", "B", "both_bad", 9, 9, 4),
    ]
    assert length_battles(rows) == [
        ("A", "B", 1.0, 30, 10, 2),
        ("B", "A", 0.0, 12, 40, 1),
        ("A", "B", 0.5, 5, 5, 3),
    ]


def test_position_bias_is_the_left_share_of_decisive_votes_with_a_wilson_interval() -> None:
    tallies = {
        ("A", "B", "left"): 30,
        ("B", "A", "left"): 10,  # whichever variant is on the left
        ("A", "B", "right"): 20,
        ("A", "B", "tie"): 7,  # ties and both-bad votes are not decisive
        ("B", "A", "both_bad"): 3,
    }
    bias = position_bias(tallies)
    assert bias.value == pytest.approx(40 / 60) and bias.n == 60
    # Wilson score interval by hand: centre (p + z²/2n) / (1 + z²/n), half-width
    # z·sqrt(p(1 − p)/n + z²/4n²) / (1 + z²/n), with p = 2/3, n = 60, z = 1.959964.
    z, p, n = 1.959963984540054, 40 / 60, 60
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (bias.low, bias.high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert bias.low > 0.5, "40 of 60 for the left side is a position bias"
    even = position_bias({("A", "B", "left"): 25, ("A", "B", "right"): 25})
    assert even.value == 0.5 and even.low < 0.5 < even.high
    none = position_bias({("A", "B", "tie"): 4})
    assert none.n == 0 and math.isnan(none.value)


def test_unknown_choices_are_refused_in_one_sentence() -> None:
    with pytest.raises(SteerLabError, match=r"^Vote choice 'maybe' is not one of left, right, tie, both_bad; .*\.$"):
        battles_from_tallies({("A", "B", "maybe"): 1})
    with pytest.raises(SteerLabError, match="'maybe'"):
        position_bias({("A", "B", "maybe"): 1})


def test_pair_verdict_is_in_terms_of_the_outputs_not_the_sides() -> None:
    # Output 3 shown on the right and chosen: the lower id won, as when it is on the left and chosen.
    assert pair_verdict(7, 3, "right") == LOWER_WON == pair_verdict(3, 7, "left")
    assert pair_verdict(7, 3, "left") == HIGHER_WON == pair_verdict(3, 7, "right")
    assert pair_verdict(7, 3, "tie") == "tie" and pair_verdict(3, 7, "both_bad") == "both_bad"
