"""Many at once on one store, on SQLite and on PostgreSQL: 8 raters voting, two workers racing for a run.

The raters use the service calls a rater's browser tab makes (``next_item`` then ``record_vote``).
They run as 2 processes of 4 threads each: Streamlit serves every tab of one dashboard from
threads of one process (they share its in-process rating queue and connection pool), and a
team runs dashboards on several hosts (processes with their own queues, that learn of each
other's votes only through the database). The experiment is built in the store through the
repository functions (as ``steerlab bench store`` does), without a model.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from db.store import Store
from engine.experiment_file import load_experiment_file
from service.bench_store import EXPERIMENT, Size, build_store
from service.catalog import save_spec
from service.jobs import enqueue, status
from service.rating import next_item, record_vote
from service.running import RunOptions
from service.worker import Worker
from tests.conftest import MOOD_FILE, needs_models

pytestmark = pytest.mark.both_stores

RATERS, VOTES, PROCESSES = 8, 500, 2
# 4 variants: 6 pairs in each of 50 prompts x 4 samples = 1,200 pairs, more than any rater's 500.
SHAPE = Size(variants=4, prompts=50, samples=4, raters=1, votes=0, repeats=1, bootstrap_rounds=10)


def _rate(url: str, raters: list[str], results: Any) -> None:
    """One dashboard process: a thread per rater, each drawing and voting ``VOTES`` times."""
    try:
        store = Store(url)
        served: dict[str, list[tuple[int, int, int]]] = {}
        errors: list[str] = []

        def rater(name: str) -> None:
            mine = served.setdefault(name, [])
            try:
                for i in range(VOTES):
                    item = next_item(store, EXPERIMENT, name)
                    assert item is not None, f"{name} ran out of pairs after {i}"
                    mine.append((min(item.left_id, item.right_id), max(item.left_id, item.right_id), item.repeat))
                    choice = ("left", "right", "tie")[i % 3]
                    record_vote(store, EXPERIMENT, name, item.left_id, item.right_id, choice, repeat=item.repeat)
            except Exception as exc:  # reported to the test, which names it
                errors.append(f"{name}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=rater, args=(name,)) for name in raters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.close()
        results.put((served, errors))
    except Exception as exc:
        results.put(({}, [f"{type(exc).__name__}: {exc}"]))


@pytest.mark.timeout(300)
def test_eight_raters_voting_at_once_lose_nothing_and_never_see_a_pair_twice(store: Store) -> None:
    build_store(store, SHAPE)
    names = [f"rater_{i}" for i in range(RATERS)]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    per_process = RATERS // PROCESSES
    processes = [
        ctx.Process(target=_rate, args=(store.url, names[i * per_process : (i + 1) * per_process], results))
        for i in range(PROCESSES)
    ]
    started = time.monotonic()
    try:
        for p in processes:
            p.start()
        outcomes = [results.get(timeout=280) for _ in processes]
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    elapsed = time.monotonic() - started
    served: dict[str, list[tuple[int, int, int]]] = {}
    for got, errors in outcomes:
        assert not errors, errors
        served.update(got)
    assert sorted(served) == names
    for name, items in served.items():
        assert len(items) == VOTES
        assert len(set(items)) == VOTES, f"{name} was served a pair twice"
        firsts = {(low, high) for low, high, repeat in items if repeat == 0}
        # A pair shown again on purpose (the repeat share, for self-consistency) follows its first showing.
        assert all((low, high) in firsts for low, high, repeat in items if repeat == 1), name
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT rater, pair_low_id, pair_high_id, repeat FROM ratings")).all()
    assert len(stored) == RATERS * VOTES, "a vote was lost"
    assert sorted((r, low, high, rep) for r, low, high, rep in stored) == sorted(
        (name, low, high, rep) for name, items in served.items() for low, high, rep in items
    )
    print(f"{RATERS * VOTES} votes by {RATERS} raters in {elapsed:.1f} s ({store.engine.dialect.name})")


@needs_models
@pytest.mark.timeout(300)
def test_two_workers_racing_for_one_run_run_it_once(store: Store, tmp_path: Path) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=4)
    data["prompts"] = data["prompts"][:3]
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    with store.session() as session:
        save_spec(session, None, load_experiment_file(path))
    run_id = enqueue(store, "tinystories_mood", RunOptions(batch_size=4, device="cpu"))
    start = threading.Barrier(2)
    processed: dict[str, int] = {}

    def worker(name: str) -> None:
        own = Store(store.url)  # each worker its own connections, as on its own host
        start.wait(timeout=60)
        processed[name] = Worker(own, once=True, poll=0.05, name=name).run()
        own.close()

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert sorted(processed.values()) == [0, 1], processed
    s = status(store, "tinystories_mood")
    assert (s.state, s.run_id, s.attempts, s.done) == ("done", run_id, 1, s.total), s
    with store.engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM generations")).scalar()
        distinct = conn.execute(
            text("SELECT count(*) FROM (SELECT DISTINCT variant_id, prompt_id, sample_index FROM generations) d")
        ).scalar()
        owner = conn.execute(text("SELECT owner FROM runs WHERE id = :id"), {"id": run_id}).scalar()
    assert count == distinct == s.total
    (winner,) = [name for name, n in processed.items() if n == 1]
    assert owner == winner
