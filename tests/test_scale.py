"""Team scale: the store benchmark, and the SQL-aggregated paths answer as the per-row ones did.

The rating queue, rating progress and Compare now count in SQL, aggregate votes into
(pair, outcome) counts and cache per data version; each test here checks them against a
straightforward per-row computation on a small real store (no timings: those are in
``steerlab bench store``). The store tests run on SQLite and on PostgreSQL: the small store is
built once per backend and copied for each test.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from db import repository as repo
from db.store import Store
from engine.model_config import config_facts
from engine.models import load_model
from engine.ranking import PRIOR_SD, Battle, bradley_terry_with_intervals, fit_bradley_terry
from service.bench_store import EXPERIMENT, TARGETS, Size, build_store, format_store_benchmark, run_store_benchmark
from service.catalog import get_experiment, stored_spec
from service.comparison import compare, drill_down, drill_rows, drill_texts
from service.rating import is_shared, next_item, progress, record_vote
from service.report import REPORT_OUTPUT_ROWS, html_report
from tests.conftest import STORIES260K, TINYSTORIES, needs_models
from tests.postgres import copy_store_url, new_store_url

pytestmark = pytest.mark.both_stores

SMALL = Size(variants=4, prompts=6, samples=2, raters=5, votes=150, repeats=1, bootstrap_rounds=200)


def small(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """The small benchmark store, built once; its URL."""
    store = Store(new_store_url(backend, folder, request))
    build_store(store, SMALL)
    store.close()
    return store.url


@pytest.fixture(scope="module")
def small_sqlite(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return small("sqlite", tmp_path_factory.mktemp("scale"), request)


@pytest.fixture(scope="module")
def small_postgresql(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return small("postgresql", tmp_path_factory.mktemp("scale"), request)


@pytest.fixture
def store(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """This test's own copy of the small store."""
    copy = Store(copy_store_url(request.getfixturevalue(f"small_{store_backend}"), tmp_path, request))
    yield copy
    copy.close()


# --- a per-row reference: what the queue, progress and Compare computed before ---------------


def _reference_state(
    store: Store,
) -> tuple[list[tuple[int, int]], Counter[tuple[int, int]], dict[tuple[int, int], set[str]], float]:
    with store.session() as session:
        experiment = get_experiment(session, EXPERIMENT)
        overlap = stored_spec(experiment).rating_overlap
        by_row: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for g, p, s, v in repo.generation_keys(session, experiment.id):
            by_row.setdefault((p, s), []).append((v, g))
        items = [(min(a, b), max(a, b)) for row in by_row.values() for (_, a), (_, b) in combinations(sorted(row), 2)]
        counts: Counter[tuple[int, int]] = Counter()
        raters: dict[tuple[int, int], set[str]] = {}
        for rater, low, high in repo.vote_pairs(session, experiment.id):
            counts[(low, high)] += 1
            raters.setdefault((low, high), set()).add(rater)
    return items, counts, raters, overlap


def _reference_pools(store: Store, rater: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(the shared pool, the others' pool) the per-row queue drew from."""
    items, counts, raters, overlap = _reference_state(store)
    open_items = [p for p in items if rater not in raters.get(p, ())]
    shared = [p for p in open_items if is_shared(p, overlap)]
    others = [p for p in open_items if not is_shared(p, overlap)]
    shared_pool = [p for p in shared if counts[p] == max(counts[q] for q in shared)] if shared else []
    others_pool = [p for p in others if counts[p] == min(counts[q] for q in others)] if others else []
    return shared_pool, others_pool


def _reference_progress(store: Store, rater: str) -> tuple[int, ...]:
    items, counts, raters, overlap = _reference_state(store)
    mine = sum(1 for p in items if rater in raters.get(p, ()))
    shared = [p for p in items if is_shared(p, overlap)]
    return (
        mine,
        len(items) - mine,
        len(items),
        sum(1 for p in items if counts[p]),
        sum(counts.values()),
        len(shared),
        sum(1 for p in shared if len(raters.get(p, ())) >= 2),
    )


def _as_tuple(p: object) -> tuple[int, ...]:
    return tuple(getattr(p, f) for f in ("rater_votes", "rater_remaining", "items", "items_rated", "votes"))


def test_queue_draws_from_the_same_pools_as_a_full_scan_and_progress_agrees(store: Store) -> None:
    rng = random.Random(3)
    for step in range(40):
        rater = f"rater_{step % 3:02d}" if step % 4 else "newcomer"
        item = next_item(store, EXPERIMENT, rater, rng)
        shared_pool, others_pool = _reference_pools(store, rater)
        assert item is not None
        pair = (min(item.left_id, item.right_id), max(item.left_id, item.right_id))
        if item.repeat:  # a pair shown to the rater again (tests/test_repeat_items.py): one they rated
            assert rater in _reference_state(store)[2].get(pair, set())
        else:
            assert pair in (shared_pool if item.shared else others_pool)
        got = progress(store, EXPERIMENT, rater)
        expected = _reference_progress(store, rater)
        assert _as_tuple(got) == expected[:5]
        assert (got.shared_items, got.shared_rated_by_several) == expected[5:]
        choice = rng.choice(("left", "right", "tie"))
        record_vote(store, EXPERIMENT, rater, item.left_id, item.right_id, choice, repeat=item.repeat)


def test_queue_follows_votes_and_outputs_stored_by_others(store: Store) -> None:
    before = progress(store, EXPERIMENT, "ann")
    # Votes stored by another process (straight through the repository), then outputs deleted.
    with store.session() as session:
        experiment = get_experiment(session, EXPERIMENT)
        keys = repo.generation_keys(session, experiment.id)
        row = [g for g, p, s, _ in keys if (p, s) == (keys[0][1], keys[0][2])]
        repo.add_ratings(session, experiment.id, [repo.NewRating("ann", row[0], row[1], "left")])
    assert progress(store, EXPERIMENT, "ann").rater_votes == before.rater_votes + 1
    with store.session() as session:
        experiment = get_experiment(session, EXPERIMENT)
        repo.delete_variant_generations(session, experiment.variants[-1].id)
    after = progress(store, EXPERIMENT, "ann")
    assert _as_tuple(after) == _reference_progress(store, "ann")[:5]
    assert after.items < before.items


def test_a_rater_who_rated_everything_gets_nothing_more(store: Store) -> None:
    rng = random.Random(0)
    served: Counter[frozenset[int]] = Counter()
    while (item := next_item(store, EXPERIMENT, "completist", rng)) is not None:
        pair = frozenset((item.left_id, item.right_id))
        served[pair] += 1
        assert served[pair] == 1 + item.repeat, "once, and a second time only as a repeat"
        record_vote(store, EXPERIMENT, "completist", item.left_id, item.right_id, "tie", repeat=item.repeat)
    assert len(served) == progress(store, EXPERIMENT, "completist").items


# --- Bradley–Terry on counts against one row per vote -----------------------------------------


def _per_vote_fit(battles: list[Battle], players: list[str], ridge: float = (400 / PRIOR_SD) ** 2) -> np.ndarray:
    # The Gaussian prior of the ratings, N(1000, PRIOR_SD²) in points, is a ridge on the coefficients (400 points each).
    """The per-vote logistic fit SteerLab used before aggregating (one design row per vote)."""
    index = {p: i for i, p in enumerate(players)}
    rows, targets, weights = [], [], []
    for b in battles:
        for target, weight in ((1.0, b.outcome), (0.0, 1.0 - b.outcome)):
            if weight > 0:
                x = np.zeros(len(players))
                x[index[b.first]] += math.log(10)
                x[index[b.second]] -= math.log(10)
                rows.append(x)
                targets.append(target)
                weights.append(weight)
    x_mat, y, w = np.array(rows), np.array(targets), np.array(weights)
    beta = np.zeros(len(players))
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x_mat @ beta)))
        gradient = x_mat.T @ (w * (y - p)) - ridge * beta
        hessian = (x_mat * (w * p * (1 - p))[:, None]).T @ x_mat + ridge * np.eye(len(players))
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    ratings = 400 * beta
    return ratings + 1000 - ratings.mean()


def _battles(n: int, players: list[str], seed: int) -> list[Battle]:
    rng = random.Random(seed)
    strength = {p: rng.gauss(0, 1) for p in players}
    out = []
    for _ in range(n):
        a, b = rng.sample(players, 2)
        win = 1 / (1 + 10 ** (strength[b] - strength[a]))
        out.append(Battle(a, b, 0.5 if rng.random() < 0.1 else float(rng.random() < win)))
    return out


def test_bradley_terry_on_counts_equals_the_per_vote_fit_and_its_bootstrap() -> None:
    players = ["a", "b", "c", "d", "e"]
    battles = _battles(400, players, seed=1)
    fitted = fit_bradley_terry(battles, players)
    assert [fitted[p] for p in players] == pytest.approx(list(_per_vote_fit(battles, players)), abs=1e-6)
    # The bootstrap over votes, done by resampling votes one by one, against the multinomial
    # draw of counts: the same distribution, so the intervals agree up to Monte Carlo noise.
    rng = np.random.default_rng(0)
    per_vote = np.array(
        [_per_vote_fit([battles[i] for i in rng.integers(0, len(battles), len(battles))], players) for _ in range(300)]
    )
    aggregated = {r.player: r for r in bradley_terry_with_intervals(battles, players, rounds=300, seed=0)}
    for i, p in enumerate(players):
        low, high = np.percentile(per_vote[:, i], [2.5, 97.5])
        width = high - low
        assert aggregated[p].low == pytest.approx(low, abs=0.15 * width)
        assert aggregated[p].high == pytest.approx(high, abs=0.15 * width)
        assert aggregated[p].battles == sum(p in (b.first, b.second) for b in battles)


def test_compare_from_sql_counts_matches_the_per_vote_computation(store: Store) -> None:
    c = compare(store, EXPERIMENT, bootstrap_rounds=100)
    with store.session() as session:
        experiment = get_experiment(session, EXPERIMENT)
        votes = [
            (r.rater, r.left.variant.name, r.right.variant.name, r.left_generation_id, r.right_generation_id, r.choice)
            for r in repo.ratings_of(session, experiment.id)
        ]
    assert c.votes == len(votes) and c.raters == len({v[0] for v in votes})
    for w in c.pairwise:
        mine = [v for v in votes if {v[1], v[2]} == {w.variant, w.opponent}]
        wins = sum(1 for v in mine if v[5] in ("left", "right") and (v[5] == "left") == (v[1] == w.variant))
        decisive = sum(1 for v in mine if v[5] in ("left", "right"))
        assert (w.wins, w.losses) == (wins, decisive - wins)
        assert (w.ties, w.both_bad) == (sum(v[5] == "tie" for v in mine), sum(v[5] == "both_bad" for v in mine))
    battles = [Battle(v[1], v[2], {"left": 1.0, "right": 0.0, "tie": 0.5}[v[5]]) for v in votes if v[5] != "both_bad"]
    reference = _per_vote_fit(battles, c.variants)
    assert [r.rating for r in c.bradley_terry] == pytest.approx(list(reference), abs=1e-6)
    decisive_votes = [v for v in votes if v[5] in ("left", "right")]
    assert c.left_wins.n == len(decisive_votes)
    assert c.left_wins.value == pytest.approx(sum(v[5] == "left" for v in decisive_votes) / len(decisive_votes))
    labels: dict[frozenset[int], dict[str, str]] = {}
    for rater, _, _, left, right, choice in votes:
        label = choice if choice in ("tie", "both_bad") else ("low" if (left < right) == (choice == "left") else "high")
        labels.setdefault(frozenset((left, right)), {})[rater] = label
    shared = [x for x in labels.values() if len(x) >= 2]
    assert c.agreement.rated_pairs == len(labels) and c.agreement.items == len(shared) > 0


def test_compare_is_cached_until_a_vote_changes_the_data(store: Store) -> None:
    first = compare(store, EXPERIMENT, bootstrap_rounds=50)
    assert compare(store, EXPERIMENT, bootstrap_rounds=50) is first, "nothing changed: the cached result"
    item = next_item(store, EXPERIMENT, "late", random.Random(1))
    assert item is not None
    record_vote(store, EXPERIMENT, "late", item.left_id, item.right_id, "left")
    second = compare(store, EXPERIMENT, bootstrap_rounds=50)
    assert second is not first and second.votes == first.votes + 1


def test_drill_down_rows_and_report_sample(store: Store) -> None:
    rows = drill_rows(store, EXPERIMENT)
    assert len(rows) == SMALL.prompts * SMALL.samples
    full = drill_down(store, EXPERIMENT)
    assert drill_texts(store, EXPERIMENT, rows[3].prompt_index, rows[3].sample) == full[3].texts
    report = html_report(store, EXPERIMENT, bootstrap_rounds=20)
    assert f"A sample: {REPORT_OUTPUT_ROWS} of {len(rows)} prompt × sample rows" in report
    assert report.count("<h3>Prompt ") == REPORT_OUTPUT_ROWS


@needs_models  # its pages show the experiment's model (TinyStories)
def test_quick_store_benchmark_gives_every_figure() -> None:
    figures = run_store_benchmark("quick")
    for name, _, _ in TARGETS:
        assert isinstance(figures[name], float) and math.isfinite(figures[name]) and figures[name] >= 0, name
        assert figures["met"][name] in (True, False)
    assert not [k for k in figures if k.endswith("_error")], figures
    table = format_store_benchmark(figures)
    assert all(name in table for name, _, _ in TARGETS)


@needs_models
@pytest.mark.parametrize("model_id", [TINYSTORIES, str(STORIES260K)])
def test_model_facts_come_from_the_config_and_match_the_loaded_model(model_id: str) -> None:
    facts = config_facts(model_id)
    loaded = load_model(model_id, "cpu")
    assert facts is not None and (facts.n_layers, facts.hidden_size) == (loaded.n_layers, loaded.hidden_size)
    assert config_facts("no-such-org/no-such-model") is None  # the caller loads it, which explains the problem
