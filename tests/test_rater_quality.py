"""Rater quality from vote rows: agreement with the others, side bias, self-consistency, flags, judges."""

from __future__ import annotations

import math
import random

import pytest

from engine.rater_quality import (
    HUMAN,
    JUDGE,
    MIN_DECISIVE_FOR_SIDE,
    MIN_REPEATS,
    MIN_SHARED_PAIRS,
    RaterQuality,
    RaterVote,
    judge_human_agreement,
    rater_quality,
)


def vote_for(
    rater: str,
    pair: tuple[int, int],
    winner: int | str,
    *,
    left_first: bool = True,
    kind: str = HUMAN,
    repeat: int = 0,
) -> RaterVote:
    """A vote on ``pair`` for output ``winner`` (or "tie"/"both_bad"), the pair's first id shown left or not."""
    left, right = pair if left_first else (pair[1], pair[0])
    choice = winner if isinstance(winner, str) else ("left" if winner == left else "right")
    return RaterVote(rater, kind, left, right, choice, repeat)


def by_rater(report: list[RaterQuality]) -> dict[str, RaterQuality]:
    return {r.rater: r for r in report}


def test_agreement_is_with_the_majority_of_the_other_raters() -> None:
    p1, p2, p3, p4, p5 = (1, 2), (3, 4), (5, 6), (7, 8), (9, 10)
    votes = [
        # p1: ann, bob and cat say 1; dan says 2.
        vote_for("ann", p1, 1),
        vote_for("bob", p1, 1, left_first=False),
        vote_for("cat", p1, 1),
        vote_for("dan", p1, 2),
        # p2: ann 3, bob 4, cat tie: for each, the two others are split -> no majority, skipped.
        vote_for("ann", p2, 3),
        vote_for("bob", p2, 4),
        vote_for("cat", p2, "tie"),
        # p3: ann and bob both "both bad"; only two raters.
        vote_for("ann", p3, "both_bad"),
        vote_for("bob", p3, "both_bad"),
        # p4: only ann: nothing to agree with.
        vote_for("ann", p4, 7),
        # p5: ann and dan disagree: each one's "others" is the other one (never themselves).
        vote_for("ann", p5, 9),
        vote_for("dan", p5, 10, left_first=False),
    ]
    report = by_rater(rater_quality(votes))
    # ann: p1 (others bob, cat, dan -> 1) agrees; p3 (bob -> both bad) agrees; p5 (dan -> 10)
    # does not; p2 split; p4 alone.
    assert report["ann"].agreement.value == pytest.approx(2 / 3) and report["ann"].agreement.n == 3
    # bob: p1 (ann, cat, dan -> 1) yes; p2 (ann 3 vs cat tie) split; p3 (ann) yes.
    assert (report["bob"].agreement.value, report["bob"].agreement.n) == (1.0, 2)
    # cat: p1 yes; p2 (ann 3 vs bob 4) split.
    assert (report["cat"].agreement.value, report["cat"].agreement.n) == (1.0, 1)
    # dan: p1 (ann, bob, cat -> 1) no; p5 (ann -> 9) no.
    assert (report["dan"].agreement.value, report["dan"].agreement.n) == (0.0, 2)
    assert report["ann"].votes == 5 and report["ann"].decisive == 4  # all but p3 (both bad)
    assert report["bob"].decisive == 2 and report["cat"].decisive == 1


def test_per_rater_counts_sides_and_kappa_against_the_others() -> None:
    rng = random.Random(0)
    pairs = [(2 * i, 2 * i + 1) for i in range(12)]
    truth = [p[0] if i % 2 else p[1] for i, p in enumerate(pairs)]  # verdicts vary between pairs
    votes = []
    for rater in ("ann", "bob", "cat"):
        for pair, winner in zip(pairs, truth, strict=True):
            votes.append(vote_for(rater, pair, winner, left_first=rng.random() < 0.5))
    # eve agrees on the first 9 pairs and says tie on the last 3.
    eve = [vote_for("eve", p, w) for p, w in zip(pairs[:9], truth[:9], strict=True)]
    eve += [vote_for("eve", p, "tie") for p in pairs[9:]]
    report = by_rater(rater_quality(votes + eve))
    e = report["eve"]
    assert (e.votes, e.decisive, e.agreement.n) == (12, 9, 12)
    assert e.agreement.value == pytest.approx(9 / 12)
    # Cohen's kappa of eve against the others' majority, by hand. Pair i odd: its lower id won,
    # even: its higher id won, so the majority says lower 6, higher 6. eve on pairs 0..8 says
    # lower on 1, 3, 5, 7 (4) and higher on 0, 2, 4, 6, 8 (5), then tie 3 times. Observed 9/12;
    # chance (4·6 + 5·6 + 3·0)/144 = 54/144; kappa = (108/144 − 54/144)/(90/144) = 54/90 = 0.6.
    assert e.kappa == pytest.approx(0.6, abs=1e-12)
    # ann agrees with the majority of bob, cat and eve on every pair.
    assert report["ann"].agreement.value == 1.0 and report["ann"].kappa == pytest.approx(1.0)
    assert not any(r.outlier for r in report.values())
    assert [r.rater for r in rater_quality(votes + eve)] == ["ann", "bob", "cat", "eve"]


def test_a_contrarian_is_flagged_with_the_reason() -> None:
    pairs = [(2 * i, 2 * i + 1) for i in range(MIN_SHARED_PAIRS)]
    rng = random.Random(1)
    votes = []
    for rater in ("ann", "bob", "cat"):
        votes += [vote_for(rater, p, p[i % 2], left_first=rng.random() < 0.5) for i, p in enumerate(pairs)]
    # zed says the opposite on every pair except two.
    votes += [vote_for("zed", p, p[(i + (i > 1)) % 2], left_first=rng.random() < 0.5) for i, p in enumerate(pairs)]
    report = by_rater(rater_quality(votes))
    z = report["zed"]
    assert z.agreement.value == pytest.approx(2 / MIN_SHARED_PAIRS) and z.agreement.n == MIN_SHARED_PAIRS
    assert z.outlier and "Agrees with the other raters' majority on 20% of 10 shared pairs" in z.reason
    assert "below the other raters' 100% (89%–100%)" in z.reason
    for honest in ("ann", "bob", "cat"):
        assert not report[honest].outlier, report[honest].reason
    # With one shared pair fewer than the minimum, no flag: too little evidence.
    fewer = [v for v in votes if v.pair != pairs[-1]]
    assert not by_rater(rater_quality(fewer))["zed"].outlier


def test_a_contrarian_among_three_is_measured_against_the_two_without_them() -> None:
    # With zed voting, ann's and bob's others are split on every pair (no figure for them); the
    # reference for zed is their agreement with zed's votes left out: 100% of 10 pairs each.
    pairs = [(2 * i, 2 * i + 1) for i in range(MIN_SHARED_PAIRS)]
    votes = [vote_for(r, p, p[0]) for r in ("ann", "bob") for p in pairs]
    votes += [vote_for("zed", p, p[1]) for p in pairs]
    report = by_rater(rater_quality(votes))
    assert report["ann"].agreement.n == 0 and report["bob"].agreement.n == 0
    assert report["zed"].agreement.value == 0.0 and report["zed"].outlier
    assert "below the other raters' 100% (" in report["zed"].reason
    # Two honest raters and nothing else: nobody is flagged.
    assert not any(r.outlier for r in rater_quality([v for v in votes if v.rater != "zed"]))


def test_position_bias_is_flagged_only_when_clear_and_large() -> None:
    n = MIN_DECISIVE_FOR_SIDE + 4
    # Each rater on pairs of their own: no shared pairs, so only the side rule can fire.
    lefty = [RaterVote("lefty", HUMAN, 2 * i, 2 * i + 1, "left" if i < n - 3 else "right") for i in range(n)]
    mild = [RaterVote("mild", HUMAN, 200 + 2 * i, 201 + 2 * i, "left" if i < 14 else "right") for i in range(n)]
    few = [RaterVote("few", HUMAN, 400 + 2 * i, 401 + 2 * i, "left") for i in range(MIN_DECISIVE_FOR_SIDE - 1)]
    report = by_rater(rater_quality(lefty + mild + few))
    assert report["lefty"].left_share.value == pytest.approx((n - 3) / n) and report["lefty"].left_share.n == n
    assert report["lefty"].outlier and f"Chose the left side in 88% of {n} decisive votes" in report["lefty"].reason
    # 14 of 24 (58%): its interval includes 0.5 -> not flagged.
    assert report["mild"].left_share.low < 0.5 and not report["mild"].outlier
    # Every vote for the left side, but fewer than the minimum: not flagged.
    assert report["few"].left_share.value == 1.0 and not report["few"].outlier
    # Ties and both-bad votes are not decisive: they do not dilute the share.
    ties = [RaterVote("lefty", HUMAN, 1000 + 2 * i, 1001 + 2 * i, "tie") for i in range(30)]
    assert by_rater(rater_quality(lefty + ties))["lefty"].left_share.n == n


def test_self_consistency_on_repeated_pairs() -> None:
    pairs = [(2 * i, 2 * i + 1) for i in range(8)]
    first = [vote_for("ann", p, p[0]) for p in pairs]
    # Repeats of the first 4 pairs, shown with the sides swapped: same verdict on 3 (the output,
    # not the side, is what counts), a different one on 1.
    repeats = [vote_for("ann", p, p[0], left_first=False, repeat=1) for p in pairs[:3]]
    repeats.append(vote_for("ann", pairs[3], "tie", repeat=1))
    ann = by_rater(rater_quality(first + repeats))["ann"]
    assert (ann.self_consistency.value, ann.self_consistency.n) == (0.75, 4)
    assert ann.votes == 12 and not ann.outlier
    # Repeats do not count as shared pairs with oneself, and nobody else rated: no agreement figure.
    assert ann.agreement.n == 0 and math.isnan(ann.kappa)
    # A rater who changes their verdict on every one of MIN_REPEATS repeats is flagged.
    flip = [vote_for("flip", p, p[0]) for p in pairs[:MIN_REPEATS]]
    flip += [vote_for("flip", p, p[1], repeat=1) for p in pairs[:MIN_REPEATS]]
    flipped = by_rater(rater_quality(flip))["flip"]
    assert flipped.self_consistency.value == 0.0 and flipped.self_consistency.n == MIN_REPEATS
    assert flipped.outlier and f"only 0% of {MIN_REPEATS} repeated pairs" in flipped.reason
    # A repeat stored before the first showing (ids out of order) is still compared with repeat 0.
    shuffled = by_rater(rater_quality(list(reversed(first + repeats))))["ann"]
    assert shuffled.self_consistency == ann.self_consistency


def test_excluded_raters_count_in_no_one_elses_figures_but_keep_their_row() -> None:
    pairs = [(2 * i, 2 * i + 1) for i in range(MIN_SHARED_PAIRS)]
    votes = [vote_for(r, p, p[0]) for r in ("ann", "wu") for p in pairs]
    votes += [vote_for(r, p, p[1]) for r in ("zed", "yan", "xi") for p in pairs]
    # ann's others (wu for the lower id; zed, yan, xi for the higher) outvote her everywhere.
    before = by_rater(rater_quality(votes))
    assert (before["ann"].agreement.value, before["ann"].agreement.n) == (0.0, MIN_SHARED_PAIRS)
    assert not any(r.excluded for r in before.values())
    # zed, yan and xi left out: ann's only other is wu, who agrees with her on every pair. They
    # keep their rows, marked, measured against the raters still counted (ann and wu).
    after = by_rater(rater_quality(votes, exclude={"zed", "yan", "xi"}))
    assert (after["ann"].agreement.value, after["ann"].agreement.n) == (1.0, MIN_SHARED_PAIRS)
    assert not after["ann"].excluded and after["zed"].excluded and after["xi"].excluded
    assert (after["zed"].agreement.value, after["zed"].agreement.n) == (0.0, MIN_SHARED_PAIRS)
    # Each of them is well below the counted raters' 100% and flagged, so the page shows why.
    assert after["zed"].outlier and "below the other raters' 100%" in after["zed"].reason


def test_judges_are_measured_against_the_humans_and_listed_after_them() -> None:
    pairs = [(2 * i, 2 * i + 1) for i in range(12)]
    truth = [p[i % 2] for i, p in enumerate(pairs)]  # 6 "lower id won", 6 "higher id won"
    humans = [vote_for(r, p, w) for r in ("ann", "bob") for p, w in zip(pairs, truth, strict=True)]
    # The judge agrees on 10 pairs and says tie on 2 where the lower id won (pairs 0 and 2).
    judge = [
        vote_for("smol-judge", p, "tie" if i in (0, 2) else w, kind=JUDGE)
        for i, (p, w) in enumerate(zip(pairs, truth, strict=True))
    ]
    # Two more pairs where the humans are split: the judge's verdicts there are left out.
    extra = [(100, 101), (102, 103)]
    humans += [vote_for("ann", p, p[0]) for p in extra] + [vote_for("bob", p, p[1]) for p in extra]
    judge += [vote_for("smol-judge", p, p[0], kind=JUDGE) for p in extra]
    [agreement] = judge_human_agreement(humans + judge)
    # By hand: majority lower 6 / higher 6; judge lower 4, higher 6, tie 2. Observed 10/12,
    # chance (4·6 + 6·6 + 2·0)/144 = 60/144, kappa = (120/144 − 60/144)/(84/144) = 60/84 = 5/7.
    assert (agreement.judge, agreement.pairs, agreement.split_pairs) == ("smol-judge", 12, 2)
    assert agreement.kappa == pytest.approx(5 / 7, abs=1e-12)
    assert agreement.agreement.value == pytest.approx(10 / 12)
    assert "Cohen's kappa with the human majority 0.71" in agreement.describe()
    # bob left out: ann alone is the majority, so the split pairs count (the judge agrees with her there).
    [without_bob] = judge_human_agreement(humans + judge, exclude={"bob"})
    assert (without_bob.pairs, without_bob.split_pairs) == (14, 0)
    assert without_bob.agreement.value == pytest.approx(12 / 14)
    # In the rater report the judge follows the humans, measured against them, never a reference.
    report = rater_quality(humans + judge)
    assert [(r.rater, r.kind) for r in report] == [("ann", HUMAN), ("bob", HUMAN), ("smol-judge", JUDGE)]
    # ann is compared with bob only (14 pairs, the 2 extra ones disagreeing): the judge is no reference.
    assert report[0].agreement.n == 14 and report[0].agreement.value == pytest.approx(12 / 14)
    assert report[2].agreement.n == 12 and report[2].agreement.value == pytest.approx(10 / 12)


def test_a_judge_without_human_overlap_has_no_figure() -> None:
    [alone] = judge_human_agreement([vote_for("j", (1, 2), 1, kind=JUDGE), vote_for("ann", (3, 4), 3)])
    assert alone.pairs == 0 and math.isnan(alone.kappa) and "no pairs rated" in alone.describe()
    assert judge_human_agreement([vote_for("ann", (3, 4), 3)]) == []
