"""Statistics against hand-computed values: intervals, the paired difference, the corrections."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from engine.errors import SteerLabError
from engine.multiplicity import adjust, benjamini_hochberg, family_size, holm
from engine.stats import (
    FEW_PROMPTS,
    bootstrap_mean,
    hall_inverse,
    hall_transform,
    paired_difference,
    prompt_mean,
    skew_corrected_mean,
    skewness,
    wilson_interval,
)

T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom


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


# --- per-prompt means and paired differences ------------------------------------------


def test_prompt_mean_is_the_mean_of_prompt_means_with_a_t_interval_over_prompts() -> None:
    # Prompt means 2, 4 and 0 (from 3, 1 and 2 generations): symmetric, so Hall's correction is
    # zero and the interval is the plain t-interval: 2 +- t(0.975; 2) * 2 / sqrt(3).
    values = [1.0, 2.0, 3.0, 4.0, 0.0, 0.0]
    prompts = ["a", "a", "a", "b", "c", "c"]
    e = prompt_mean(values, prompts)
    assert e.value == pytest.approx(2.0)  # not the grand mean over generations, 10/6
    half = T_975_DF2 * 2.0 / math.sqrt(3)
    assert (e.low, e.high) == pytest.approx((2.0 - half, 2.0 + half))
    assert (e.prompts, e.generations, e.n) == (3, 6, 3)
    assert e.describe() == f"2.000 [{2.0 - half:.3f}, {2.0 + half:.3f}] (3 prompts, 6 generations)"
    assert e.few_prompts and FEW_PROMPTS == 20
    # A wider level gives a wider interval around the same value.
    wide = prompt_mean(values, prompts, confidence=0.99)
    assert wide.low < e.low and wide.high > e.high and wide.value == e.value


def test_prompt_mean_edge_cases() -> None:
    assert prompt_mean([], []).describe() == "no scores (0 prompts, 0 generations)"
    one = prompt_mean([0.25, 0.75], ["p", "p"])
    assert one.value == 0.5 and math.isnan(one.low) and one.prompts == 1
    assert one.describe() == "0.500 (no interval from 1 prompt; 1 prompt, 2 generations)"
    # A generation a scorer could not score is left out, and not counted.
    skipped = prompt_mean([1.0, math.nan, 3.0, math.inf], ["a", "a", "b", "b"])
    assert (skipped.value, skipped.generations, skipped.prompts) == (2.0, 2, 2)
    flat = prompt_mean([0.5] * 6, [0, 0, 1, 1, 2, 2])
    assert (flat.low, flat.value, flat.high) == (0.5, 0.5, 0.5)
    many = prompt_mean(list(range(40)), [i // 2 for i in range(40)])
    assert many.prompts == 20 and not many.few_prompts
    with pytest.raises(ValueError):
        prompt_mean([1.0, 2.0], ["a"])
    with pytest.raises(SteerLabError, match="confidence level"):
        prompt_mean([1.0, 2.0], ["a", "b"], confidence=95)


def test_paired_difference_on_a_small_table() -> None:
    baseline = {("A", 0): 0.5, ("A", 1): 0.5, ("B", 0): 2.0, ("B", 1): 3.0, ("B", 2): 1.0, ("C", 0): 2.0, ("D", 0): 7.0}
    variant = {("A", 0): 1.0, ("A", 1): 2.0, ("B", 0): 3.0, ("B", 1): 3.0, ("B", 2): math.nan, ("C", 0): 2.0}
    variant[("C", 1)] = 9.0  # no baseline row: left out, like ("D", 0) and the NaN
    d = paired_difference(variant, baseline)
    # Per-prompt mean differences: A (0.5 + 1.5)/2 = 1, B (1 + 0)/2 = 0.5, C 0 -> mean 0.5, sd 0.5,
    # symmetric (no skew correction): 0.5 +- 4.3027 * 0.5 / sqrt(3); t = 0.5 / (0.5 / sqrt 3) = sqrt 3 and
    # the two-sided p of t(2) is 1 - sqrt(3) / sqrt(3 + 2) = 0.22540.
    assert (d.prompts, d.pairs) == (3, 5)
    assert d.value == pytest.approx(0.5)  # the 5 pairs' plain mean would be 0.6
    assert d.sd == pytest.approx(0.5)
    half = T_975_DF2 * 0.5 / math.sqrt(3)
    assert (d.low, d.high) == pytest.approx((0.5 - half, 0.5 + half))
    assert d.p_value == pytest.approx(1 - math.sqrt(3) / math.sqrt(5))
    assert d.describe() == f"+0.500 [{0.5 - half:+.3f}, {0.5 + half:+.3f}] (3 prompts, 5 pairs; p = 0.225)"
    # Swapping the sides flips the difference and its interval.
    back = paired_difference(baseline, variant)
    assert (back.value, back.low, back.high) == pytest.approx((-0.5, -d.high, -d.low))


def test_paired_difference_without_shared_rows_is_empty_not_an_error() -> None:
    d = paired_difference({(0, 0): 1.0}, {(1, 0): 1.0})
    assert (d.prompts, d.pairs) == (0, 0)
    assert all(math.isnan(x) for x in (d.value, d.low, d.high, d.sd, d.p_value))
    assert d.describe() == "no matched (prompt, sample) rows"
    one = paired_difference({(0, 0): 1.0, (0, 1): 2.0}, {(0, 0): 0.0, (0, 1): 0.0})
    assert (one.value, one.prompts, one.pairs) == (1.5, 1, 2) and math.isnan(one.low)


def test_skewness_and_hall_transformation_by_hand() -> None:
    # [0, 0, 0, 3]: m2 = 1.6875, m3 = 2.53125, g1 = m3 / m2^1.5 = 1.1547, G1 = g1 * sqrt(12) / 2 = 2.
    assert skewness([0, 0, 0, 3]) == pytest.approx(2.0)
    data = np.random.default_rng(1).exponential(size=25)
    assert skewness(data) == pytest.approx(scipy_stats.skew(data, bias=False))
    assert skewness([1.0, 2.0]) == 0.0 and skewness([3.0, 3.0, 3.0]) == 0.0
    # n = 16, G1 = 1.2: a = 1.2 / (3 * 4) = 0.1, b = 1.2 / (6 * 4) = 0.05;
    # g(2) = 2 + 0.1 * 4 + 0.01 * 8 / 3 + 0.05 = 2.476667.
    assert float(hall_transform(2.0, 1.2, 16)) == pytest.approx(2.4766667, abs=1e-6)
    t = np.linspace(-30, 30, 121)
    for skew in (-3.0, -0.5, 0.0, 1e-14, 0.7, 4.0):
        u = hall_transform(t, skew, 10)
        assert np.all(np.diff(u) >= 0)  # monotone: g'(t) = (1 + a t)^2
        assert hall_inverse(u, skew, 10) == pytest.approx(t, abs=1e-7)


def test_skewed_units_give_an_interval_stretched_towards_the_long_tail() -> None:
    units = [0.1, 0.2, 0.15, 0.3, 0.1, 0.25, 2.5, 0.2, 0.1, 1.8]  # a long right tail
    r = skew_corrected_mean(units)
    plain_half = scipy_stats.t.ppf(0.975, 9) * np.std(units, ddof=1) / math.sqrt(10)
    assert r.high - r.value > plain_half > r.value - r.low
    mirrored = skew_corrected_mean([-u for u in units])
    assert (mirrored.low, mirrored.high) == pytest.approx((-r.high, -r.low))


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_p_value_and_interval_are_one_test(confidence: float) -> None:
    """p < 1 - confidence exactly when the interval excludes 0; 0 on the edge gives p = 1 - confidence."""
    rng = np.random.default_rng(7)
    for n in (3, 8, 25):
        for _ in range(20):
            units = rng.lognormal(0, 0.8, n) - 1.2
            r = skew_corrected_mean(units, confidence)
            assert (r.p_value < 1 - confidence) == (r.low > 0 or r.high < 0)
            # Moving the data so that 0 sits on the lower edge changes neither sd nor skewness.
            edge = skew_corrected_mean(units - r.low, confidence)
            assert edge.low == pytest.approx(0.0, abs=1e-9)
            assert edge.p_value == pytest.approx(1 - confidence, rel=1e-6)


# --- corrections for many comparisons -------------------------------------------------


def test_holm_on_a_textbook_example() -> None:
    # m = 4, sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04, then running
    # maxima 0.02, 0.03, 0.06, 0.06; back in the input's order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # At alpha 0.05 Holm keeps 0.005 and 0.01 significant, not 0.03 and 0.04 (raw: all four).
    assert [p <= 0.05 for p in holm([0.01, 0.04, 0.03, 0.005])] == [True, False, False, True]
    assert holm([0.3, 0.8]) == pytest.approx([0.6, 0.8])  # 2 * 0.3, then max(0.6, 0.8)
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1


def test_benjamini_hochberg_on_a_textbook_example() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 -> m p / rank = 0.02, 0.02, 0.04, 0.04, then running minima from
    # the top (already monotone); back in the input's order:
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # Step-up: a larger p-value can lift a smaller one's rank: 0.04 * 2 / 2 = 0.04 beats 0.039 * 2 / 1.
    assert benjamini_hochberg([0.039, 0.04]) == pytest.approx([0.04, 0.04])
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = rng.uniform(0, 0.2, 12).tolist()
        assert benjamini_hochberg(p) == pytest.approx(scipy_stats.false_discovery_control(p, method="bh").tolist())


def test_corrections_keep_order_cap_at_one_and_pass_nan_through() -> None:
    rng = np.random.default_rng(5)
    for correction in (holm, benjamini_hochberg):
        p = rng.uniform(0, 1, 30)
        adjusted = np.array(correction(p.tolist()))
        assert np.all(adjusted >= p) and np.all(adjusted <= 1.0)
        order = np.argsort(p)
        assert np.all(np.diff(adjusted[order]) >= 0)  # monotone in the raw p-values
        with_gaps = correction([0.01, math.nan, 0.04])
        assert math.isnan(with_gaps[1])
        assert [with_gaps[0], with_gaps[2]] == correction([0.01, 0.04])  # NaN does not count in m
        assert correction([]) == []
    assert family_size([0.1, math.nan, 0.2]) == 2
    assert adjust([0.01, 0.02], "holm") == holm([0.01, 0.02])
    with pytest.raises(SteerLabError, match="not known"):
        adjust([0.01], "bonferroni")  # type: ignore[arg-type]
    with pytest.raises(SteerLabError, match="not between 0 and 1"):
        holm([0.5, 1.5])


def test_holm_keeps_the_family_wise_error_where_raw_p_values_do_not() -> None:
    """Ten true nulls: raw p-values give some false positive in ~40% of families; Holm in <= 5%."""
    p = np.random.default_rng(11).uniform(size=(3000, 10))
    raw = np.mean((p <= 0.05).any(axis=1))
    corrected = np.mean([min(holm(row.tolist())) <= 0.05 for row in p])
    fdr = np.mean([min(benjamini_hochberg(row.tolist())) <= 0.05 for row in p])
    assert raw > 0.35
    assert corrected <= 0.055 and fdr <= 0.055  # all nulls true: the FDR is the family-wise rate
