"""Statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from engine.stats import bootstrap_mean, wilson_interval


def test_wilson_interval_matches_hand_computation() -> None:
    # p = 0.7, n = 10, z = 1.96: centre = (0.7 + 0.19208) / 1.38416, half = 1.96 * sqrt(0.021 + 0.0096040) / 1.38416
    e = wilson_interval(7, 10)
    assert e.value == pytest.approx(0.7)
    assert e.low == pytest.approx(0.39677, abs=1e-4)
    assert e.high == pytest.approx(0.89222, abs=1e-4)
    assert wilson_interval(0, 0).n == 0
    assert wilson_interval(10, 10).high == pytest.approx(1.0)


def test_bootstrap_is_seeded_and_covers_the_mean() -> None:
    values = [0.0, 1.0, 0.5, 0.25, 0.75, 1.0, 0.0, 0.5]
    a, b = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert a == b and a.low < a.value < a.high and a.n == 8
    clustered = bootstrap_mean(values, clusters=[0, 0, 1, 1, 2, 2, 3, 3])
    assert clustered.value == pytest.approx(sum(values) / 8)
    assert clustered.low <= clustered.value <= clustered.high
    assert math.isnan(bootstrap_mean([]).value)
