"""The rating queue and vote recording, against a real store (SQLite and PostgreSQL) with real generations."""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from db.store import Store
from engine.errors import SteerLabError
from service.comparison import compare
from service.export import export_data
from service.rating import next_item, progress, record_vote
from service.running import RunOptions, run_experiment_file
from tests.conftest import MOOD_FILE, needs_models
from tests.postgres import copy_store_url, new_store_url
from tests.voters import vote_at_the_barrier

pytestmark = [needs_models, pytest.mark.both_stores]


def rated(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """A store with a small run of the mood example (2 prompts, 3 variants, 1 sample): its URL."""
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    data["prompts"] = data["prompts"][:2]
    data["variants"] = data["variants"][:3]
    path = folder / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    store = Store(new_store_url(backend, folder, request))
    run_experiment_file(store, path, RunOptions(device="cpu"))
    store.close()
    return store.url


@pytest.fixture(scope="module")
def rated_sqlite(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return rated("sqlite", tmp_path_factory.mktemp("rate"), request)


@pytest.fixture(scope="module")
def rated_postgresql(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return rated("postgresql", tmp_path_factory.mktemp("rate"), request)


@pytest.fixture
def db(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of this test's own copy of the rated store."""
    return copy_store_url(request.getfixturevalue(f"rated_{store_backend}"), tmp_path, request)


def test_queue_serves_least_rated_first_and_never_repeats_for_a_rater(db: str) -> None:
    store = Store(db)
    rng = random.Random(0)
    seen = set()
    sides: Counter[str] = Counter()
    for _ in range(6):  # 2 prompts x 3 variant pairs = 6 items
        item = next_item(store, "tinystories_mood", "ann", rng)
        assert item is not None and item.left_variant != item.right_variant
        pair = frozenset((item.left_id, item.right_id))
        assert pair not in seen
        seen.add(pair)
        sides[item.left_variant] += 1
        record_vote(store, "tinystories_mood", "ann", item.left_id, item.right_id, "left")
    assert next_item(store, "tinystories_mood", "ann", rng) is None
    assert len(sides) > 1, "sides are drawn at random"
    # Bob first gets an item nobody... all items have one vote now, so any; after his vote
    # the least-rated ones (still one vote) come before the one he just made two-voted.
    first = next_item(store, "tinystories_mood", "bob", rng)
    assert first is not None
    record_vote(store, "tinystories_mood", "bob", first.left_id, first.right_id, "tie")
    p = progress(store, "tinystories_mood", "bob")
    assert (p.rater_votes, p.items, p.votes, p.items_rated) == (1, 6, 7, 6)
    stored = export_data(store, "tinystories_mood")["ratings"]
    assert [(r["rater"], r["choice"]) for r in stored][-1] == ("bob", "tie")
    assert compare(store, "tinystories_mood", bootstrap_rounds=50).agreement.items == 1


def test_bad_votes_are_refused(db: str) -> None:
    store = Store(db)
    item = next_item(store, "tinystories_mood", "ann")
    assert item is not None
    with pytest.raises(SteerLabError, match="not one of left, right, tie, both_bad"):
        record_vote(store, "tinystories_mood", "ann", item.left_id, item.right_id, "maybe")
    with pytest.raises(SteerLabError, match="rater name is empty"):
        record_vote(store, "tinystories_mood", "  ", item.left_id, item.right_id, "left")
    record_vote(store, "tinystories_mood", "ann", item.left_id, item.right_id, "left")
    with pytest.raises(SteerLabError, match="already rated this pair"):
        record_vote(store, "tinystories_mood", "ann", item.right_id, item.left_id, "right")
    with pytest.raises(SteerLabError, match="not both outputs"):
        record_vote(store, "tinystories_mood", "ann", item.left_id, 999999, "left")
    assert len(export_data(store, "tinystories_mood")["ratings"]) == 1


def test_votes_from_many_raters_at_once_are_all_kept(db: str) -> None:
    errors: list[Exception] = []

    def rater(name: str) -> None:
        store = Store(db)  # its own connection, like a second browser tab
        try:
            for _ in range(6):
                item = next_item(store, "tinystories_mood", name)
                assert item is not None
                record_vote(store, "tinystories_mood", name, item.left_id, item.right_id, "right")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rater, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(export_data(Store(db), "tinystories_mood")["ratings"]) == 24


def test_one_rater_voting_one_pair_from_four_processes_at_once_stores_one_vote(db: str) -> None:
    store = Store(db)
    items = []
    for _ in range(3):  # three pairs, each voted by the same rater from four processes at the same instant
        item = next_item(store, "tinystories_mood", "erin")
        assert item is not None and item not in items
        items.append(item)
        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(4), ctx.Queue()
        workers = [
            ctx.Process(
                daemon=True,
                target=vote_at_the_barrier,
                args=(
                    db,
                    "tinystories_mood",
                    "erin",
                    *((item.left_id, item.right_id) if i % 2 else (item.right_id, item.left_id)),
                    "left",
                    barrier,
                    results,
                ),
            )
            for i in range(4)
        ]
        try:
            for w in workers:
                w.start()
            outcomes = [results.get(timeout=120) for _ in workers]
        finally:
            for w in workers:  # never leave a process behind: pytest would wait for it at exit
                w.join(timeout=30)
                if w.is_alive():
                    w.kill()
        assert outcomes.count("stored") == 1, outcomes
        assert all("already rated this pair" in o for o in outcomes if o != "stored")
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text("SELECT rater, pair_low_id, pair_high_id FROM ratings"))]
    assert sorted(rows) == sorted(("erin", min(i.left_id, i.right_id), max(i.left_id, i.right_id)) for i in items)
