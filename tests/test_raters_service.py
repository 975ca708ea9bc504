"""The rater report and judge–human agreement of a real store: votes stored through the service, checked there."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from sqlalchemy import func, select

from db import repository as repo
from db.schema import Rating
from db.store import Store
from engine.rater_quality import HUMAN, JUDGE, MIN_SHARED_PAIRS
from service.bench_store import EXPERIMENT, Size, build_store
from service.catalog import get_experiment
from service.raters import excluded_in, judge_human_agreement, rater_report
from service.rating import record_vote

# 3 variants x 12 prompts, one sample each: 12 rows of 3 outputs, no votes (no model needed).
SHAPE = Size(variants=3, prompts=12, samples=1, raters=1, votes=0, repeats=1, bootstrap_rounds=10)


pytestmark = pytest.mark.both_stores


@pytest.fixture
def store(store: Store) -> Store:
    build_store(store, SHAPE)
    return store


def output_rows(store: Store) -> list[list[int]]:
    """Per (prompt, sample) row, the output ids in variant order."""
    with store.session() as session:
        keys = repo.generation_keys(session, get_experiment(session, EXPERIMENT).id)
    rows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for generation_id, prompt_id, sample, variant_position in keys:
        rows.setdefault((prompt_id, sample), []).append((variant_position, generation_id))
    return [[g for _, g in sorted(row)] for _, row in sorted(rows.items())]


def vote(store: Store, rater: str, pair: tuple[int, int], winner: int | str, rng: random.Random) -> None:
    """A person's vote through the rating service, sides drawn at random."""
    left, right = pair if rng.random() < 0.5 else (pair[1], pair[0])
    choice = winner if isinstance(winner, str) else ("left" if winner == left else "right")
    record_vote(store, EXPERIMENT, rater, left, right, choice)


def store_votes(store: Store, votes: list[repo.NewRating]) -> None:
    """Judges' votes and repeats straight through the repository (as the judge runner and the queue store them)."""
    with store.session() as session:
        repo.add_ratings(session, get_experiment(session, EXPERIMENT).id, votes)


def set_excluded_in_definition(store: Store, raters: list[str]) -> None:
    """What leaving raters out stores: the names in the definition's ``statistics.exclude_raters``."""
    with store.session() as session:
        experiment = get_experiment(session, EXPERIMENT)
        data = json.loads(experiment.spec_json)
        data.setdefault("statistics", {})["exclude_raters"] = raters
        experiment.spec_json = json.dumps(data)


def test_rater_report_from_the_store(store: Store) -> None:
    rng = random.Random(0)
    rows = output_rows(store)
    main = [(row[0], row[1]) for row in rows]  # variant 0 vs 1 on each of the 12 prompts
    winners = [pair[i % 2] for i, pair in enumerate(main)]  # which output is better alternates
    for rater in ("ann", "bob", "cat"):
        for pair, winner in zip(main, winners, strict=True):
            vote(store, rater, pair, winner, rng)
    # zed contradicts the others on every pair; ann sees 4 pairs again (one verdict changed).
    for pair, winner in zip(main, winners, strict=True):
        vote(store, "zed", pair, pair[1] if winner == pair[0] else pair[0], rng)
    # Better outputs: pair 0 its first id, pair 1 its second, pair 2 its first, pair 3 its second.
    store_votes(
        store,
        [
            repo.NewRating("ann", main[0][1], main[0][0], "right", repeat=1),  # swapped sides, same output
            repo.NewRating("ann", main[1][0], main[1][1], "right", repeat=1),  # same output
            repo.NewRating("ann", main[2][0], main[2][1], "right", repeat=1),  # the other output this time
            repo.NewRating("ann", main[3][0], main[3][1], "tie", repeat=1),  # a tie this time
        ],
    )

    report = {r.rater: r for r in rater_report(store, EXPERIMENT)}
    assert list(report) == ["ann", "bob", "cat", "zed"]
    # Checked in the store: every vote of each rater is counted, decisive ones apart.
    with store.session() as session:
        stored = Counter(dict(session.execute(select(Rating.rater, func.count()).group_by(Rating.rater)).all()))
    assert {r: q.votes for r, q in report.items()} == stored == {"ann": 16, "bob": 12, "cat": 12, "zed": 12}
    assert report["ann"].decisive == 15 and report["bob"].decisive == 12
    # zed disagrees with the others' majority on every pair and is flagged; the others are not.
    assert (report["zed"].agreement.value, report["zed"].agreement.n) == (0.0, len(main))
    assert report["zed"].outlier and "Agrees with the other raters' majority on 0%" in report["zed"].reason
    assert all(not report[r].outlier and report[r].agreement.value == 1.0 for r in ("ann", "bob", "cat"))
    assert all(q.kind == HUMAN and not q.excluded for q in report.values())
    # Sides are drawn at random: each rater's left share counts exactly their decisive votes.
    assert report["bob"].left_share.n == 12
    # ann's repeats: the same verdict on 2 of 4.
    assert (report["ann"].self_consistency.value, report["ann"].self_consistency.n) == (0.5, 4)
    assert len(main) >= MIN_SHARED_PAIRS, "enough shared pairs for the agreement rule to apply"


def test_leaving_a_rater_out_is_read_from_the_stored_definition(store: Store) -> None:
    rng = random.Random(1)
    rows = output_rows(store)
    main = [(row[0], row[1]) for row in rows]
    for rater in ("ann", "bob"):
        for pair in main:
            vote(store, rater, pair, pair[0], rng)
    for pair in main:
        vote(store, "zed", pair, pair[1], rng)
    assert excluded_in(_spec_json(store)) == ()
    before = {r.rater: r for r in rater_report(store, EXPERIMENT)}
    assert not before["zed"].excluded and before["zed"].outlier
    set_excluded_in_definition(store, ["zed"])
    # The report follows the change at once (its cache is keyed by the stored data, definition included).
    after = {r.rater: r for r in rater_report(store, EXPERIMENT)}
    assert after["zed"].excluded and not after["ann"].excluded
    assert excluded_in(_spec_json(store)) == ("zed",)
    # ann's others are now bob only: full agreement on every pair (before: bob against zed, split).
    assert before["ann"].agreement.n == 0
    assert (after["ann"].agreement.value, after["ann"].agreement.n) == (1.0, len(main))
    # Nothing stored was lost: zed's votes are still there.
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Rating).where(Rating.rater == "zed")) == len(main)


def test_judge_agreement_with_the_human_majority_from_the_store(store: Store) -> None:
    rng = random.Random(2)
    rows = output_rows(store)
    main = [(row[0], row[1]) for row in rows]
    winners = [pair[i % 2] for i, pair in enumerate(main)]  # lower id won on even pairs, higher on odd
    for rater in ("ann", "bob"):
        for pair, winner in zip(main, winners, strict=True):
            vote(store, rater, pair, winner, rng)
    # Two pairs (variant 0 vs 2) where ann and zed disagree: split without a majority.
    extra = [(row[0], row[2]) for row in rows[:2]]
    for pair in extra:
        vote(store, "ann", pair, pair[0], rng)
        vote(store, "zed", pair, pair[1], rng)
    # The judge agrees on 10 main pairs, says tie on pairs 0 and 2 (lower id won there), and
    # votes on the two split pairs; stored as a judge's votes (left = lower id).
    judge = [
        repo.NewRating(
            "smol-judge",
            pair[0],
            pair[1],
            "tie" if i in (0, 2) else ("left" if winner == pair[0] else "right"),
            rater_kind=JUDGE,
        )
        for i, (pair, winner) in enumerate(zip(main, winners, strict=True))
    ]
    judge += [repo.NewRating("smol-judge", pair[0], pair[1], "left", rater_kind=JUDGE) for pair in extra]
    store_votes(store, judge)

    [agreement] = judge_human_agreement(store, EXPERIMENT)
    # By hand: the human majority says lower 6, higher 6; the judge lower 4, higher 6, tie 2.
    # Observed 10/12, chance (4·6 + 6·6)/144 = 60/144, kappa = (120 − 60)/(144 − 60) = 5/7.
    assert (agreement.judge, agreement.pairs, agreement.split_pairs) == ("smol-judge", 12, 2)
    assert agreement.kappa == pytest.approx(5 / 7, abs=1e-12)
    # The judge is listed in the rater report after the people, marked as a judge.
    report = rater_report(store, EXPERIMENT)
    assert [(r.rater, r.kind) for r in report][-1] == ("smol-judge", JUDGE)
    # zed left out: ann alone decides the split pairs, where the judge agrees with her.
    set_excluded_in_definition(store, ["zed"])
    [without_zed] = judge_human_agreement(store, EXPERIMENT)
    assert (without_zed.pairs, without_zed.split_pairs) == (14, 0)
    assert without_zed.agreement.value == pytest.approx(12 / 14)


def test_an_experiment_without_votes_has_an_empty_report(store: Store) -> None:
    assert rater_report(store, EXPERIMENT) == []
    assert judge_human_agreement(store, EXPERIMENT) == []


def _spec_json(store: Store) -> str:
    with store.session() as session:
        return get_experiment(session, EXPERIMENT).spec_json
