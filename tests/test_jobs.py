"""Queued runs: enqueue, one active run per experiment, watch from another connection, cancel, resume.

On SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from db import runs
from db.store import Store
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from service.access import Identity
from service.catalog import get_experiment, save_spec
from service.jobs import cancel, enqueue, missing_worker, status
from service.running import RunOptions
from service.worker import Worker
from tests.conftest import MOOD_FILE, needs_models

pytestmark = pytest.mark.both_stores


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stored_mood(store: Store, tmp_path: Path, samples: int, tokens: int) -> Store:
    """``store`` with the mood example's definition (no outputs), generating ``samples`` x ``tokens``."""
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=samples, max_new_tokens=tokens)
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    with store.session() as session:
        save_spec(session, None, load_experiment_file(path))
    return store


def test_a_second_active_run_is_refused_in_one_sentence_and_a_cancelled_queued_run_never_starts(
    store: Store, tmp_path: Path
) -> None:
    stored_mood(store, tmp_path, samples=1, tokens=4)
    first = enqueue(
        store,
        "tinystories_mood",
        RunOptions(batch_size=4, device="cpu"),
        who=Identity("ann@example.com", signed_in=False),
    )
    assert status(store, "tinystories_mood").state == "queued"
    with pytest.raises(SteerLabError) as refused:
        enqueue(store, "tinystories_mood")
    assert str(refused.value) == (
        f"Experiment 'tinystories_mood' already has a queued or running run (run {first}); wait for it or cancel it."
    )
    assert cancel(store, "tinystories_mood")
    s = status(store, "tinystories_mood")
    assert (s.state, s.requested_by, s.attempts) == ("cancelled", "ann@example.com", 0)
    assert Worker(store, once=True, poll=0.05).run() == 0, "a cancelled queued run is never claimed"
    assert not cancel(store, "tinystories_mood"), "nothing active to cancel"


def test_claims_are_atomic_when_many_workers_race(store: Store, tmp_path: Path) -> None:
    stored_mood(store, tmp_path, samples=1, tokens=4)
    run_id = enqueue(store, "tinystories_mood")
    start = threading.Barrier(8)
    won: list[str] = []

    def race(i: int) -> None:
        other = Store(store.url)  # one connection pool per "host"
        start.wait()
        with other.session() as session:
            if runs.claim_run(session, run_id, f"worker-{i}", 60):
                won.append(f"worker-{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    with store.session() as session:
        run = runs.latest_run(session, get_experiment(session, "tinystories_mood").id)
        assert run is not None and (run.status, run.owner, run.attempts) == ("running", won[0], 1)
        assert not runs.claim_run(session, run_id, "late", 60), "a live lease is not taken"


def test_missing_worker_is_said_when_queued_runs_wait(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored_mood(store, tmp_path, samples=1, tokens=4)
    assert missing_worker(store) == ""
    enqueue(store, "tinystories_mood")
    assert missing_worker(store) == "", "a worker has a moment to claim a fresh run"
    monkeypatch.setenv("STEERLAB_POLL_SECONDS", "0.01")
    with store.session() as session:  # as if queued a minute ago
        run = runs.latest_run(session, get_experiment(session, "tinystories_mood").id)
        assert run is not None
        run.updated_at = run.updated_at.replace(year=run.updated_at.year - 1)
    assert missing_worker(store).startswith("No worker is running: 1 queued run is waiting; start one with `steerlab")


@needs_models
def test_queued_run_is_watched_cancelled_and_resumed_by_a_worker(store: Store, tmp_path: Path) -> None:
    stored_mood(store, tmp_path, samples=2, tokens=32)
    assert status(store, "tinystories_mood").state == "never run"
    enqueue(store, "tinystories_mood", RunOptions(batch_size=4, device="cpu"))
    stop = threading.Event()
    worker = Worker(Store(store.url), stop, poll=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        other_tab = Store(store.url)
        wait_for(lambda: status(other_tab, "tinystories_mood").done >= 8, 60, "8 generations")
        watched = status(other_tab, "tinystories_mood")
        assert watched.state == "running" and watched.total == 180 and watched.rate > 0
        assert watched.worker == worker.name and watched.heartbeat_at is not None
        assert cancel(other_tab, "tinystories_mood")
        wait_for(lambda: status(store, "tinystories_mood").state == "cancelled", 60, "the cancel")
        stopped = status(store, "tinystories_mood")
        assert 8 <= stopped.done < 180 and stopped.traceback == ""

        enqueue(store, "tinystories_mood", RunOptions(batch_size=64, device="cpu"))
        wait_for(lambda: status(store, "tinystories_mood").state == "done", 120, "the resumed run")
    finally:
        stop.set()
        thread.join()
    finished = status(store, "tinystories_mood")
    assert (finished.done, finished.total, finished.error) == (180, 180, "")


def test_only_owners_start_or_cancel_runs_and_both_are_in_the_audit_log(store: Store, tmp_path: Path) -> None:
    from service.access import AccessDenied, grant
    from service.audit import recent

    stored_mood(store, tmp_path, samples=1, tokens=4)
    rater = Identity("rita@example.com", signed_in=True)
    grant(store, Identity("admin", signed_in=False), "tinystories_mood", rater.user, "rater")
    with pytest.raises(AccessDenied):
        enqueue(store, "tinystories_mood", who=rater)
    assert status(store, "tinystories_mood").state == "never run", "a refused start stores nothing"
    run_id = enqueue(store, "tinystories_mood", who=Identity("olga@example.com", signed_in=False))
    with pytest.raises(AccessDenied):
        cancel(store, "tinystories_mood", who=rater)
    assert cancel(store, "tinystories_mood", who=Identity("olga@example.com", signed_in=False))
    events = [(e.actor, e.action, e.detail) for e in recent(store, "tinystories_mood")]
    assert ("olga@example.com", "run queued", f"run {run_id}") in events
    assert ("olga@example.com", "run cancelled", f"run {run_id}") in events
    assert not any(actor == rater.user for actor, _, _ in events)
