"""Live statistics hold what they claim: coverage of one-look intervals, false positives under peeking.

Simulations are vectorised numpy with fixed seeds (a few seconds in all); tolerances are a
few Monte Carlo standard errors, so a correct method cannot fail them and a wrong one does
(a fixed-sample interval read after every 50 observations: 27-36% false positives).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from db.store import Store
from engine.live_stats import (
    compare_scores,
    compare_thumbs,
    mean_estimate,
    mixture_tuning,
    newcombe_difference,
    sequence_multiplier,
    sequence_p_value,
    welch_difference,
)
from service.access import LOCAL
from service.deployments import ServedResponse, create_deployment, record_feedback, record_responses, user_key
from service.editing import create_experiment
from service.live_comparison import live_comparison

pytestmark = pytest.mark.both_stores

ALPHA = 0.05


def _mc_tolerance(rate: float, reps: int) -> float:
    return 4 * math.sqrt(rate * (1 - rate) / reps)


@pytest.mark.parametrize(("p1", "n1", "p0", "n0"), [(0.3, 120, 0.2, 80), (0.9, 60, 0.85, 200), (0.05, 400, 0.08, 400)])
def test_newcombe_interval_covers_the_difference_of_shares(p1: float, n1: int, p0: float, n0: int) -> None:
    rng = np.random.default_rng(7)
    reps = 20_000
    s1, s0 = rng.binomial(n1, p1, reps), rng.binomial(n0, p0, reps)
    _, low, high = newcombe_difference(s1, n1, s0, n0, ALPHA)
    coverage = float(((low <= p1 - p0) & (p1 - p0 <= high)).mean())
    assert coverage >= 0.95 - _mc_tolerance(0.95, reps) - 0.01, coverage  # Newcombe: near-nominal, rarely below


def test_welch_interval_covers_the_difference_of_skewed_scores() -> None:
    rng = np.random.default_rng(8)
    reps, n1, n0 = 20_000, 60, 90
    a, b = rng.beta(0.5, 3.0, (reps, n1)), rng.beta(2.0, 2.0, (reps, n0))
    truth = 0.5 / 3.5 - 0.5
    _, low, high, _ = welch_difference(a.mean(1), a.var(1, ddof=1), n1, b.mean(1), b.var(1, ddof=1), n0, ALPHA)
    coverage = float(((low <= truth) & (truth <= high)).mean())
    assert abs(coverage - 0.95) < _mc_tolerance(0.95, reps) + 0.01, coverage


def _peeking(outcomes: np.ndarray, arm: np.ndarray, step: int, binary: bool) -> tuple[float, float]:
    """Share of simulated experiments ever called significant, looking every ``step`` observations:
    by the always-valid p-value, and by the fixed-sample interval."""
    looks = np.arange(step - 1, outcomes.shape[1], step)
    n1 = np.cumsum(arm, 1)[:, looks]
    n0 = looks + 1 - n1
    s1, s0 = np.cumsum(outcomes * arm, 1)[:, looks], np.cumsum(outcomes * ~arm, 1)[:, looks]
    m1, m0 = s1 / n1, s0 / n0
    if binary:
        q1, q0 = (s1 + 1) / (n1 + 2), (s0 + 1) / (n0 + 2)
        v1, v0 = q1 * (1 - q1), q0 * (1 - q0)
        _, low, high = newcombe_difference(s1, n1, s0, n0, ALPHA)
    else:
        sq1, sq0 = np.cumsum(outcomes**2 * arm, 1)[:, looks], np.cumsum(outcomes**2 * ~arm, 1)[:, looks]
        v1, v0 = (sq1 - n1 * m1**2) / (n1 - 1), (sq0 - n0 * m0**2) / (n0 - 1)
        _, low, high, _ = welch_difference(m1, v1, n1, m0, v0, n0, ALPHA)
    p = sequence_p_value((m1 - m0) / np.sqrt(v1 / n1 + v0 / n0), n1 + n0, mixture_tuning(ALPHA))
    return float((p <= ALPHA).any(1).mean()), float(((low > 0) | (high < 0)).any(1).mean())


@pytest.mark.parametrize("kind", ["thumbs 30% up", "thumbs 5% up", "skewed scores"])
def test_looking_after_every_50_observations_keeps_false_positives_below_alpha(kind: str) -> None:
    rng = np.random.default_rng({"thumbs 30% up": 1, "thumbs 5% up": 2, "skewed scores": 3}[kind])
    reps, total = 800, 3000
    arm = rng.random((reps, total)) < 0.5
    if kind == "skewed scores":
        outcomes = rng.beta(0.5, 3.0, (reps, total))
    else:
        outcomes = (rng.random((reps, total)) < (0.3 if "30" in kind else 0.05)).astype(float)
    always, fixed = _peeking(outcomes, arm, 50, binary=kind != "skewed scores")
    assert always <= ALPHA + _mc_tolerance(ALPHA, reps), always
    assert fixed > 3 * ALPHA, f"the fixed-sample interval read 60 times should fail ({fixed})"


def test_the_sequence_finds_a_real_difference_and_its_p_value_matches_its_edge() -> None:
    rng = np.random.default_rng(4)
    up1, up0 = 600, 450  # 40% against 30% of 1,500 each
    found = compare_thumbs(up1, 1500, up0, 1500)
    assert found.verdict.label == "better" and found.always_low > 0 and found.low > found.always_low
    assert found.low <= found.estimate <= found.high
    # At the p-value's own level the sequence's edge touches 0.
    t, tuning = 3000, mixture_tuning(ALPHA)
    z = found.estimate / math.sqrt(
        ((up1 + 1) / 1502) * (1 - (up1 + 1) / 1502) / 1500 + ((up0 + 1) / 1502) * (1 - (up0 + 1) / 1502) / 1500
    )
    p = float(sequence_p_value(z, t, tuning))
    assert abs(p - found.raw_p_value) < 1e-12
    assert float(sequence_multiplier(t, ALPHA, tuning)) > 1.96
    few = compare_thumbs(3, 5, 2, 5)
    assert few.verdict.label == "keep collecting" and (few.verdict.more_needed or 0) > 100
    assert "Keep collecting: about" in few.verdict.sentence and "10 so far" in few.verdict.sentence
    same = compare_scores(rng.beta(2, 2, 3000).tolist(), rng.beta(2, 2, 3000).tolist())
    assert same.verdict.label == "no detectable difference", same.verdict.sentence
    empty = compare_scores([], [0.5])
    assert math.isnan(empty.raw_p_value) and empty.verdict.label == "keep collecting"


def test_live_comparison_reads_traffic_by_served_variant_and_feedback_by_assigned_arm_per_user(store: Store) -> None:
    create_experiment(
        store,
        {
            "name": "live_mood",
            "model": "raincandy-u/TinyStories-656K",
            "prompts": ["Once upon a time "],
            "vectors": {"sad": {"pairs": [["sad", "happy"]]}},
            "variants": [
                {"name": "baseline"},
                {"name": "sad", "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 1}]},
            ],
            "statistics": {"alpha": 0.1},
        },
    )
    create_deployment(store, LOCAL, "mood", "live_mood", {"baseline": 1, "sad": 1})
    now = datetime.now(UTC)
    rows, thumbs = [], []
    for i in range(40):
        served = "sad" if i % 2 else "baseline"
        # User u0 gets two responses of the baseline: one unit with the mean of their thumbs.
        user = "u0" if i in (0, 2) else f"u{i}"
        assigned = "sad" if i == 38 else served  # the kill switch sent one "sad" user the baseline
        row = ServedResponse(f"chatcmpl-{i}", "live_mood", "mood", assigned, served, "", user_key(user), "chat",
                             "[]", "text", 5, 10 + i, 0.01 * (i + 1), 0.1 * (i + 1), "stop", now)  # fmt: skip
        rows.append(row)
        thumbs.append((f"chatcmpl-{i}", user, "up" if (i % 3 == 0) else "down"))
    record_responses(store, rows)
    for rid, user, thumb in thumbs:
        record_feedback(store, rid, thumbs=thumb, user=user, score=0.5)
    result = live_comparison(store, "mood")
    assert result.alpha == 0.1 and result.correction == "holm"
    base, sad = result.variants
    # Served: what ran (latency, tokens); users and feedback: the arm assigned (intention to treat),
    # so the user the kill switch sent to the baseline still counts for sad, and in one sample only.
    assert (base.variant, base.served, base.assigned, base.users) == ("baseline", 20, 19, 18)
    assert (sad.variant, sad.served, sad.assigned, sad.users) == ("sad", 20, 21, 21)
    assert base.latency_p50 == pytest.approx(np.percentile([0.1 * (i + 1) for i in range(0, 40, 2)], 50))
    assert sad.thumbs_up.n == 21 and base.thumbs_up.n == 18 and base.score.value == pytest.approx(0.5)
    # u0 gave a thumbs up and a thumbs down: a unit with share 0.5, so every share is a mean over users.
    assert result.thumbs_interval == "t over users' shares"
    assert base.thumbs_up == mean_estimate([0.5, *(1.0 if i % 3 == 0 else 0.0 for i in range(4, 38, 2))], 0.1)
    # The family: 1 arm x (thumbs, score, preference), the preference counted though nobody gave one.
    assert result.family == 3 and all(d.family == 3 and d.correction == "holm" for _, d in result.differences)
    assert {d.metric for _, d in result.differences} == {"thumbs_up", "score"} and not result.preferences


def test_the_t_interval_over_users_shares_covers_when_users_give_mixed_thumbs() -> None:
    # 200 users per look, each with 1 to 6 thumbs and their own up-rate: clustered, overdispersed thumbs.
    rng = np.random.default_rng(11)
    looks, covered = 2000, 0
    rates = rng.beta(2, 3, (looks, 200))
    counts = rng.integers(1, 7, (looks, 200))
    ups = rng.binomial(counts, rates)
    truth = 2 / 5  # a user's expected share is their expected rate, the Beta(2, 3) mean
    for shares in ups / counts:
        e = mean_estimate(shares.tolist(), 0.05)
        covered += e.low <= truth <= e.high
    # 2000 looks: a true 95% interval covers 93% to 97% of them (4 binomial sd), a wrong one would not.
    assert 0.93 <= covered / looks <= 0.97, covered / looks
