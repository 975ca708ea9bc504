"""Compare's verdicts on a real store: votes counted as stored, judges apart, left-out raters and repeats
not counted, one corrected family, and every figure in the JSON export and the HTML report."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from sqlalchemy import bindparam, text

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from engine.statistics_spec import StatisticsSpec
from service.bench_store import EXPERIMENT, Size, build_store
from service.catalog import get_experiment, import_experiment, stored_spec
from service.comparison import Comparison, compare, compare_two
from service.decisions import HUMAN_VOTES, judge_metric
from service.export import export_json
from service.rater_settings import set_rater_excluded
from service.rating import next_item, record_vote
from service.report import html_report

# baseline, prompt_01 and prompt_02 over 24 prompts, one sample each, with word scores (no model needed).
SHAPE = Size(variants=3, prompts=24, samples=1, raters=1, votes=0, repeats=1, bootstrap_rounds=20)


pytestmark = pytest.mark.both_stores


@pytest.fixture
def store(store: Store) -> Store:
    build_store(store, SHAPE)
    return store


def rows(store: Store) -> list[dict[str, int]]:
    """Per (prompt, sample) row: variant name -> output id."""
    with store.session() as session:
        experiment = get_experiment(session, EXPERIMENT)
        names = {v.id: v.name for v in experiment.variants}
        out: dict[tuple[int, int], dict[str, int]] = {}
        for g in repo.generations_of(session, experiment.id):
            out.setdefault((g.prompt_id, g.sample_index), {})[names[g.variant_id]] = g.id
    return [out[k] for k in sorted(out)]


def vote_for(store: Store, rater: str, winner: int, loser: int, rng: random.Random) -> None:
    """A person's vote through the rating service, sides drawn at random."""
    if rng.random() < 0.5:
        record_vote(store, EXPERIMENT, rater, winner, loser, "left")
    else:
        record_vote(store, EXPERIMENT, rater, loser, winner, "right")


def wins_in_store(store: Store, variant: str, opponent: str, exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """The variant's decisive wins and losses against the opponent among people's first showings, in SQL."""
    query = text(
        """
        SELECT
          SUM(CASE WHEN (r.choice = 'left' AND lv.name = :v) OR (r.choice = 'right' AND rv.name = :v) THEN 1 ELSE 0 END),
          SUM(CASE WHEN (r.choice = 'left' AND lv.name = :o) OR (r.choice = 'right' AND rv.name = :o) THEN 1 ELSE 0 END)
        FROM ratings r
        JOIN generations lg ON lg.id = r.left_generation_id JOIN variants lv ON lv.id = lg.variant_id
        JOIN generations rg ON rg.id = r.right_generation_id JOIN variants rv ON rv.id = rg.variant_id
        WHERE r.rater_kind = 'human' AND r."repeat" = 0 AND r.choice IN ('left', 'right')
          AND ((lv.name = :v AND rv.name = :o) OR (lv.name = :o AND rv.name = :v))
        """
        + (" AND r.rater NOT IN :excluded" if exclude else "")
    )
    if exclude:
        query = query.bindparams(bindparam("excluded", expanding=True))
    params: dict[str, object] = {"v": variant, "o": opponent}
    if exclude:
        params["excluded"] = list(exclude)
    with store.engine.connect() as connection:
        wins, losses = connection.execute(query, params).one()
    return int(wins or 0), int(losses or 0)


def test_verdicts_count_the_people_as_stored_and_keep_judges_repeats_and_left_out_raters_apart(store: Store) -> None:
    rng = random.Random(3)
    table = rows(store)
    # Two raters prefer prompt_01 over the baseline on 20 of 24 rows; mallory votes the other way on all.
    for rater in ("ann", "bob"):
        for i, row in enumerate(table):
            if i < 20:
                vote_for(store, rater, row["prompt_01"], row["baseline"], rng)
            else:
                vote_for(store, rater, row["baseline"], row["prompt_01"], rng)
    for row in table:
        vote_for(store, "mallory", row["baseline"], row["prompt_01"], rng)
    # A judge that prefers the baseline everywhere, and one repeat of ann's: neither is a person's first showing.
    with store.session() as session:
        experiment_id = get_experiment(session, EXPERIMENT).id
        repo.add_ratings(
            session,
            experiment_id,
            [
                repo.NewRating("judge:tone", row["baseline"], row["prompt_01"], "left", rater_kind="judge")
                for row in table
            ]
            + [repo.NewRating("ann", table[0]["baseline"], table[0]["prompt_01"], "left", repeat=1)],
        )

    c = compare(store, EXPERIMENT, bootstrap_rounds=20)
    assert c.decisions is not None
    people = {(d.variant, d.metric): d for d in c.decisions.people}
    # One family: each of the two variants on the people's votes and on both scores.
    assert set(people) == {
        (v, m) for v in ("prompt_01", "prompt_02") for m in (HUMAN_VOTES, "sad_words", "happy_words")
    }
    assert {d.comparison.family for d in c.decisions.people} == {6}
    votes = people[("prompt_01", HUMAN_VOTES)].votes
    assert votes is not None and (votes.wins, votes.losses) == wins_in_store(store, "prompt_01", "baseline") == (40, 32)
    assert c.judge_votes == 24
    judged = {(d.variant, d.metric): d for d in c.decisions.judges}
    judge_votes = judged[("prompt_01", judge_metric("judge:tone"))].votes
    assert judge_votes is not None and (judge_votes.wins, judge_votes.losses) == (0, 24)
    assert judged[("prompt_01", judge_metric("judge:tone"))].label == "worse"

    # Leaving mallory out recomputes every figure without her; her votes stay stored.
    set_rater_excluded(store, EXPERIMENT, "mallory", True)
    c = compare(store, EXPERIMENT, bootstrap_rounds=20)
    assert c.decisions is not None and c.excluded_raters == ("mallory",)
    votes = next(d.votes for d in c.decisions.people if (d.variant, d.metric) == ("prompt_01", HUMAN_VOTES))
    assert votes is not None
    assert (votes.wins, votes.losses) == wins_in_store(store, "prompt_01", "baseline", ("mallory",)) == (40, 8)
    assert votes.p_value < 0.05 and votes.win_rate.low > 0.5
    assert next(r for r in c.rater_quality if r.rater == "mallory").excluded
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM ratings WHERE rater = 'mallory'")).scalar() == 24

    data = json.loads(export_json(store, EXPERIMENT))["comparison"]
    exported = next(
        d for d in data["verdicts"]["against_baseline"] if (d["variant"], d["metric"]) == ("prompt_01", HUMAN_VOTES)
    )
    assert (exported["wins"], exported["losses"], exported["family"]) == (40, 8, 6)
    assert exported["verdict"] == people_label(c, "prompt_01") and exported["adjusted_p_value"] >= exported["p_value"]
    assert data["excluded_raters"] == ["mallory"] and data["judge_votes"] == 24
    assert {r["rater"] for r in data["raters_quality"]} == {"ann", "bob", "mallory", "judge:tone"}
    assert data["statistics"]["correction"] == "holm" and len(data["bradley_terry"]) == 3
    report = html_report(store, EXPERIMENT, bootstrap_rounds=20)
    assert "<h2>Verdicts</h2>" in report and "<h2>Raters and judges</h2>" in report
    assert "Left out of every statistic: mallory." in report and "LLM judges" in report


def people_label(c: Comparison, variant: str) -> str:
    assert c.decisions is not None
    return next(d.label for d in c.decisions.people if (d.variant, d.metric) == (variant, HUMAN_VOTES))


def test_two_chosen_variants_are_compared_uncorrected_and_a_wrong_name_is_one_sentence(store: Store) -> None:
    rng = random.Random(5)
    for row in rows(store):
        vote_for(store, "ann", row["prompt_02"], row["prompt_01"], rng)
    pair = compare_two(store, EXPERIMENT, "prompt_02", "prompt_01")
    assert [d.metric for d in pair] == [HUMAN_VOTES, "sad_words", "happy_words"]
    votes = pair[0].votes
    assert votes is not None and (votes.wins, votes.losses) == (24, 0) and votes.family == 1
    assert pair[0].label == "better"
    with pytest.raises(SteerLabError, match=r"^Experiment '.+' has no variant 'nope'; pick one of its variants\.$"):
        compare_two(store, EXPERIMENT, "nope", "prompt_01")


def test_storing_the_file_again_keeps_the_raters_left_out_on_the_dashboard(store: Store) -> None:
    rng = random.Random(7)
    row = rows(store)[0]
    vote_for(store, "mallory", row["baseline"], row["prompt_01"], rng)
    set_rater_excluded(store, EXPERIMENT, "mallory", True)
    with store.session() as session:
        # The same definition again, with no statistics section (as a file that never named mallory).
        again = replace(stored_spec(get_experiment(session, EXPERIMENT)), statistics=StatisticsSpec())
        import_experiment(session, again, "again.yaml", {})
    with store.session() as session:
        assert stored_spec(get_experiment(session, EXPERIMENT)).statistics.exclude_raters == ("mallory",)


def test_the_rating_queue_serves_pairs_against_the_baseline_first(store: Store) -> None:
    # Each row has 3 pairs, 2 of them against the baseline: the 48 that decide verdicts come first.
    rng = random.Random(11)
    for _ in range(40):
        item = next_item(store, EXPERIMENT, "ann", rng)
        assert item is not None
        record_vote(store, EXPERIMENT, "ann", item.left_id, item.right_id, "left", repeat=item.repeat)
    with store.engine.connect() as connection:
        without_baseline = connection.execute(
            text(
                """SELECT COUNT(*) FROM ratings r
                JOIN generations lg ON lg.id = r.left_generation_id JOIN variants lv ON lv.id = lg.variant_id
                JOIN generations rg ON rg.id = r.right_generation_id JOIN variants rv ON rv.id = rg.variant_id
                WHERE lv.name != 'baseline' AND rv.name != 'baseline'"""
            )
        ).scalar()
        total = connection.execute(text("SELECT COUNT(*) FROM ratings")).scalar()
    assert (total, without_baseline) == (40, 0)
