"""The rating queue and vote recording, against a real store with real generations."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from db.store import Store
from engine.errors import SteerLabError
from service.comparison import compare
from service.export import export_data
from service.rating import next_item, progress, record_vote
from service.running import RunOptions, run_experiment_file
from tests.conftest import MOOD_FILE, needs_models

pytestmark = needs_models


def copy_db(source: Path, target: Path) -> Path:
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)  # includes what is still in the WAL file
    return target


@pytest.fixture(scope="module")
def rated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rate")
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    data["prompts"] = data["prompts"][:2]
    data["variants"] = data["variants"][:3]
    path = folder / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    run_experiment_file(Store(str(folder / "r.db")), path, RunOptions(device="cpu"))
    return folder / "r.db"


def test_queue_serves_least_rated_first_and_never_repeats_for_a_rater(tmp_path: Path, rated_db: Path) -> None:
    db = copy_db(rated_db, tmp_path / "copy.db")
    store = Store(str(db))
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


def test_bad_votes_are_refused(tmp_path: Path, rated_db: Path) -> None:
    db = copy_db(rated_db, tmp_path / "copy.db")
    store = Store(str(db))
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


def test_votes_from_many_raters_at_once_are_all_kept(tmp_path: Path, rated_db: Path) -> None:
    db = copy_db(rated_db, tmp_path / "copy.db")
    errors: list[Exception] = []

    def rater(name: str) -> None:
        store = Store(str(db))  # its own connection, like a second browser tab
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
    assert len(export_data(Store(str(db)), "tinystories_mood")["ratings"]) == 24


def _vote_at_the_barrier(db: str, left: int, right: int, choice: str, barrier: Any, results: Any) -> None:
    try:
        store = Store(db)  # its own connection, like another tab's server session
    except Exception as exc:
        barrier.abort()  # the others must not wait for this one for ever
        results.put(f"could not open the store: {exc}")
        return
    barrier.wait(timeout=120)
    try:
        record_vote(store, "tinystories_mood", "erin", left, right, choice)
        results.put("stored")
    except SteerLabError as exc:
        results.put(str(exc))


def test_one_rater_voting_one_pair_from_four_processes_at_once_stores_one_vote(tmp_path: Path, rated_db: Path) -> None:
    db = copy_db(rated_db, tmp_path / "copy.db")
    store = Store(str(db))
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
                target=_vote_at_the_barrier,
                args=(
                    str(db),
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
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT rater, pair_low_id, pair_high_id FROM ratings").fetchall()
    assert sorted(rows) == sorted(("erin", min(i.left_id, i.right_id), max(i.left_id, i.right_id)) for i in items)
