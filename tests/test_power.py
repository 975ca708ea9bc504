"""Sample sizes against known answers and exact power, and the verdicts built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from engine.errors import SteerLabError
from engine.multiplicity import benjamini_hochberg, holm
from engine.power import decisive_votes_needed, prompts_needed
from engine.sequential import (
    running_mean_p_values,
    sequential_prompts_needed,
    sequential_votes_needed,
    vote_mixture_concentration,
    vote_p_value,
)
from engine.stats import prompt_differences, sign_flip_p_value
from engine.verdicts import ScoreComparison, VoteComparison, compare_scores, compare_votes, correct, verdict

# --- fixed-sample sizes ---------------------------------------------------------------------


def _binomial_power(n: int, win_rate: float) -> float:
    """Exact power of the two-sided z-test of 1/2 after n decisive votes, from the binomial distribution."""
    wins = np.arange(n + 1)
    z = (wins - n / 2) / math.sqrt(n / 4)
    return float(scipy_stats.binom.pmf(wins, n, win_rate)[np.abs(z) >= scipy_stats.norm.ppf(0.975)].sum())


def test_decisive_votes_for_60_percent_against_50() -> None:
    # (1.95996 * 0.5 + 0.84162 * sqrt(0.24))^2 / 0.1^2 = (0.97998 + 0.41231)^2 / 0.01 = 193.85 -> 194;
    # the "about 196" is the cruder (1.96 + 0.84)^2 * 0.25 / 0.01 = 196.
    assert decisive_votes_needed(0.6, 0.05, 0.8) == 194
    assert decisive_votes_needed() == 194 and decisive_votes_needed(0.4) == 194
    assert 0.80 <= _binomial_power(194, 0.6) <= 0.82  # the exact binomial power at that size
    assert _binomial_power(170, 0.6) < 0.8
    assert decisive_votes_needed(0.55) > 3 * decisive_votes_needed(0.6)  # a quarter of the effect: ~4x the votes
    assert decisive_votes_needed(0.6, alpha=0.01) > 194 and decisive_votes_needed(0.6, power=0.9) > 194


def test_prompts_for_the_paired_comparison() -> None:
    # G*Power, "means: difference from constant (one sample case)", d = 0.5, two-sided 0.05, power 0.8: 34.
    assert prompts_needed(sd=1.0, difference=0.5) == 34
    assert prompts_needed(sd=0.2, difference=-0.1) == 34  # only the ratio and the size of the difference count

    def power(n: int, effect: float) -> float:
        edge = scipy_stats.t.ppf(0.975, n - 1)
        shift = math.sqrt(n) * effect
        return float(scipy_stats.nct.sf(edge, n - 1, shift) + scipy_stats.nct.cdf(-edge, n - 1, shift))

    for effect in (0.2, 0.5, 1.0, 2.0):
        n = prompts_needed(1.0, effect)
        assert power(n, effect) >= 0.79 and power(n - 1, effect) < 0.81  # the exact noncentral-t power
    assert prompts_needed(1.0, 2.0) == 5  # a huge effect still needs a few prompts for a t-test
    assert prompts_needed(0.0, 0.1) == 2  # no spread: the fewest a t-test can use


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: decisive_votes_needed(0.5), "within 0.01 of 50%"),
        (lambda: decisive_votes_needed(1.2), "not strictly between 0 and 1"),
        (lambda: decisive_votes_needed(0.6, alpha=0.6), "alpha"),
        (lambda: decisive_votes_needed(0.6, power=0.4), "power"),
        (lambda: prompts_needed(1.0, 0.0), "difference to detect"),
        (lambda: prompts_needed(math.nan, 0.1), "at least 2 prompts"),
        (lambda: compare_scores({}, {}, difference_effect=-1.0), "not a positive number"),
    ],
)
def test_bad_settings_are_one_sentence(call, words: str) -> None:
    with pytest.raises(SteerLabError, match=words) as raised:
        call()
    message = str(raised.value)
    assert message.endswith(".") and message.count(". ") == 0


# --- sample sizes of the always-valid tests ---------------------------------------------------


def test_sequential_votes_needed_matches_simulated_looks_after_every_vote() -> None:
    needed = sequential_votes_needed(0.6)
    assert needed == 317  # about 1.6 x the single look's 194: the price of looking every day
    won = np.random.default_rng(8).random((4000, needed)) < 0.6
    wins = np.cumsum(won, axis=1)
    losses = np.arange(1, needed + 1) - wins
    found = (vote_p_value(wins, losses, vote_mixture_concentration(0.6)) <= 0.05) & (wins > losses)
    assert np.mean(found.any(axis=1)) == pytest.approx(0.8, abs=0.02)
    assert np.mean(found[:, :250].any(axis=1)) < 0.75
    assert sequential_votes_needed(0.4) == needed  # symmetric
    assert sequential_votes_needed(0.6, alpha=0.05 / 6) > needed


def test_sequential_prompts_needed_is_an_upper_bound_for_looks_after_every_prompt() -> None:
    needed = sequential_prompts_needed(1.0, 0.5)
    assert prompts_needed(1.0, 0.5) == 34 < needed == 65
    units = np.random.default_rng(9).normal(0.5, 1.0, (4000, needed))
    found = (running_mean_p_values(units) <= 0.05) & (np.cumsum(units, axis=1) > 0)
    assert np.mean(found.any(axis=1)) >= 0.8  # at least the promised power
    assert np.mean(found[:, -1]) == pytest.approx(0.8, abs=0.03)  # the power of the one look it counts
    # No spread: t is infinite and the ratio ((n - 1)/2) log(1 + 0.09 n) first reaches log 20 = 3.0 at
    # n = 11 (10: 4.5 log 1.9 = 2.89; 11: 5 log 1.99 = 3.44).
    assert sequential_prompts_needed(0.0, 0.1) == 11


# --- verdicts -----------------------------------------------------------------------------------


def test_vote_verdicts_follow_the_rules() -> None:
    keep = compare_votes(46, 30)
    assert keep.verdict.label == "keep rating"
    assert keep.verdict.more_needed == 317 - 76
    assert keep.verdict.sentence == (
        "Keep rating: about 241 more decisive votes to detect a 60% win rate with 80% power (76 so far)."
    )
    assert (keep.votes_needed, keep.fixed_votes_needed, keep.decisive) == (317, 194, 76)
    assert keep.win_rate.n == 76 and keep.win_rate.value == pytest.approx(46 / 76)
    better = compare_votes(140, 60)
    assert better.verdict.label == "better" and better.verdict.more_needed == 0
    assert better.verdict.sentence == (
        "Better: the always-valid test is significant at alpha 0.05 (p < 0.001) after 200 decisive votes."
    )
    assert compare_votes(60, 140).verdict.label == "worse"
    even = compare_votes(170, 170)  # 340 >= 317 and far from significant
    assert even.verdict.label == "no detectable difference"
    assert even.verdict.sentence.startswith(
        "No detectable difference: 340 decisive votes, enough to detect a 60% win rate with 80% power"
    )
    # Significant by a single look's standard, not by the always-valid one: keep rating.
    assert scipy_stats.binomtest(62, 100).pvalue < 0.05
    assert compare_votes(62, 38).verdict.label == "keep rating"
    nothing = compare_votes(0, 0)
    assert nothing.verdict.label == "keep rating" and nothing.verdict.more_needed == 317
    assert compare_votes(1, 0).verdict.sentence.endswith(
        "about 316 more decisive votes to detect a 60% win rate with 80% power (1 so far)."
    )


def test_verdict_rules_directly() -> None:
    common = {"alpha": 0.05, "unit": "prompts", "effect": "a difference of 0.05"}
    assert verdict(0.1, 0.01, 10, 40, **common).label == "better"  # type: ignore[arg-type]
    assert verdict(0.1, 0.01, 10, 40, higher_is_better=False, **common).label == "worse"  # type: ignore[arg-type]
    assert verdict(-0.1, 0.05, 10, 40, **common).label == "worse"  # type: ignore[arg-type]
    assert verdict(0.1, 0.051, 40, 40, **common).label == "no detectable difference"  # type: ignore[arg-type]
    unknown = verdict(0.1, 0.5, 1, None, **common)  # type: ignore[arg-type]
    assert (unknown.label, unknown.more_needed) == ("keep rating", None)
    assert unknown.sentence == (
        "Add prompts: too little data yet to estimate how many more prompts are needed to detect a difference "
        "of 0.05 with 80% power (1 so far)."
    )
    one_more = verdict(0.1, 0.5, 39, 40, **common)  # type: ignore[arg-type]
    assert (
        one_more.sentence
        == "Add prompts: about 1 more prompt to detect a difference of 0.05 with 80% power (39 so far)."
    )
    corrected = verdict(0.1, 0.01, 10, 40, correction="holm", family=6, **common)  # type: ignore[arg-type]
    assert "(p = 0.010, Holm-adjusted over 6 comparisons)" in corrected.sentence


def _rows(
    prompts: int, shift: float, noise: float, seed: int
) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
    rng = np.random.default_rng(seed)
    baseline = {(p, s): float(rng.normal(p % 5, 1.0)) for p in range(prompts) for s in range(3)}
    variant = {k: v + shift + float(rng.normal(0, noise)) for k, v in baseline.items()}
    return variant, baseline


def test_score_verdicts_follow_the_rules() -> None:
    variant, baseline = _rows(12, 0.8, 0.5, seed=0)
    better = compare_scores(variant, baseline)
    assert better.verdict.label == "better" and better.prompts == 12 and better.pairs == 36
    assert better.sequential.low > 0 and better.difference.low > 0
    assert better.sequential.low < better.difference.low  # always valid costs width
    lower_better = compare_scores(variant, baseline, higher_is_better=False)
    assert lower_better.verdict.label == "worse"
    # The default effect is half the SD of the baseline's per-prompt means, and says so.
    prompt_means = [np.mean([baseline[(p, s)] for s in range(3)]) for p in range(12)]
    assert better.baseline_sd == pytest.approx(np.std(prompt_means, ddof=1))
    assert better.difference_effect == pytest.approx(better.baseline_sd / 2) and better.effect_from_baseline_sd
    assert "(half the baseline's per-prompt SD)" in better.effect_words
    same, base = _rows(12, 0.0, 0.5, seed=1)
    keep = compare_scores(same, base, difference_effect=0.05)
    assert keep.verdict.label == "keep rating" and not keep.effect_from_baseline_sd
    # Scores are judged by the one-look paired t-test (a run's scores arrive at once); the always-valid
    # test's larger need is kept beside it.
    assert keep.p_value == keep.sign_flip_p_value == sign_flip_p_value(prompt_differences(same, base)[0])
    assert keep.prompts_needed == prompts_needed(keep.difference.sd, 0.05)
    assert keep.sequential_prompts_needed == sequential_prompts_needed(keep.difference.sd, 0.05)
    assert keep.prompts_needed < keep.sequential_prompts_needed
    assert keep.prompts_needed is not None and keep.verdict.more_needed == keep.prompts_needed - 12
    assert keep.verdict.sentence.startswith("Add prompts: about")
    assert "to detect a difference of 0.05 with 80% power (12 so far)" in keep.verdict.sentence
    plenty, base = _rows(80, 0.0, 0.5, seed=2)
    enough = compare_scores(plenty, base, difference_effect=0.2)
    assert enough.prompts_needed is not None and enough.prompts_needed <= 80
    assert enough.verdict.label == "no detectable difference"
    lonely = compare_scores({(0, 0): 1.0}, {(0, 0): 0.5})
    assert lonely.verdict.label == "keep rating" and lonely.verdict.more_needed is None
    assert lonely.prompts_needed is None and math.isnan(lonely.difference_effect)
    empty = compare_scores({(0, 0): 1.0}, {(1, 0): 0.5})
    assert empty.prompts == 0 and empty.verdict.label == "keep rating"


def test_correct_adjusts_a_family_and_recomputes_verdicts() -> None:
    variant, baseline = _rows(12, 0.8, 0.5, seed=0)
    family: list[VoteComparison | ScoreComparison] = [
        compare_votes(46, 30),
        compare_votes(122, 78),  # significant alone (p = 0.039), not after Holm over 4
        compare_votes(140, 60),
        compare_scores(variant, baseline),
    ]
    assert family[1].verdict.label == "better"
    raw = [c.p_value for c in family]
    for method, adjusted in (("holm", holm(raw)), ("benjamini_hochberg", benjamini_hochberg(raw))):
        out = correct(family, method)  # type: ignore[arg-type]
        assert [c.adjusted_p_value for c in out] == pytest.approx(adjusted)
        assert [c.p_value for c in out] == raw  # the raw figure stays beside the adjusted one
        assert all(c.family == 4 and c.correction == method for c in out)
        assert [type(c) for c in out] == [type(c) for c in family]
    holm_out = correct(family, "holm")
    assert holm_out[1].verdict.label == "keep rating"
    assert holm_out[2].verdict.label == "better" and "Holm-adjusted over 4 comparisons" in holm_out[2].verdict.sentence
    # Power at the corrected level alpha / 4 needs more votes, and the sentence says why.
    assert holm_out[0].votes_needed == sequential_votes_needed(0.6, 0.05 / 4) > family[0].votes_needed  # type: ignore[union-attr]
    assert "(corrected for 4 comparisons; 76 so far)" in holm_out[0].verdict.sentence
    assert family[1].verdict.label == "better" and family[1].correction is None  # the originals are untouched
    assert correct([], "holm") == []
