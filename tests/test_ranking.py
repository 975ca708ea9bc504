"""Pairwise statistics against hand-computed and textbook values."""

from __future__ import annotations

import math

import pytest

from engine.ranking import Battle, bradley_terry_with_intervals, cohen_kappa, fit_bradley_terry, fleiss_kappa


def test_two_variant_bradley_terry_reduces_to_the_log_odds() -> None:
    # A wins 6, ties 2 (half a win each way), loses 2: p = 7/10.
    battles = [Battle("A", "B", 1.0)] * 6 + [Battle("A", "B", 0.5)] * 2 + [Battle("B", "A", 1.0)] * 2
    ratings = fit_bradley_terry(battles, ["A", "B"])
    expected_gap = 400 * math.log10(0.7 / 0.3)
    assert ratings["A"] - ratings["B"] == pytest.approx(expected_gap, abs=1e-3)
    assert (ratings["A"] + ratings["B"]) / 2 == pytest.approx(1000)


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
    # A player that won every battle still gets a finite rating.
    assert math.isfinite(fit_bradley_terry([Battle("A", "B", 1.0)] * 3, ["A", "B"])["A"])


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
