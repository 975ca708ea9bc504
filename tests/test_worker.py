"""Workers as real processes: takeover after kill -9, racing claims, a dashboard restart, failures, bad input.

The in-process tests (a failed run, a deleted experiment, a store refused) run on SQLite and on
PostgreSQL; the tests of worker processes stay on SQLite files (tests/test_postgres.py and
tests/test_concurrency.py run killed and racing workers on PostgreSQL).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

from db.store import Store
from engine.experiment_file import load_experiment_file
from service.catalog import save_spec
from service.cli import main
from service.editing import delete_experiment
from service.export import export_data
from service.jobs import enqueue, status
from service.running import RunOptions, run_stored
from service.worker import Worker
from tests.conftest import MOOD_FILE, ROOT, STORIES260K, needs_models
from tests.postgres import PostgresServer

NAME = "tinystories_mood"
# Short leases so a killed worker's run is free within seconds; quick polls so idle workers claim at once.
FAST = {"STEERLAB_LEASE_SECONDS": "2", "STEERLAB_POLL_SECONDS": "0.1", "PYTHONPATH": str(ROOT)}


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def mood_store(tmp_path: Path, db: str, samples: int = 1, tokens: int = 8, prompts: int = 10) -> Path:
    """A stored (not yet run) mood experiment; returns the database file."""
    store = Store(str(tmp_path / db))
    store_mood(store, tmp_path / f"{db}.yaml", samples, tokens, prompts)
    store.close()
    return tmp_path / db


def store_mood(store: Store, path: Path, samples: int = 1, tokens: int = 8, prompts: int = 10) -> None:
    """Store the (not yet run) mood experiment in ``store``, its file written at ``path``."""
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=samples, max_new_tokens=tokens)
    data["prompts"] = data["prompts"][:prompts]
    path.write_text(yaml.safe_dump(data))
    with store.session() as session:
        save_spec(session, None, load_experiment_file(path))


def rows(db: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(query).fetchall()


def generations(db: Path) -> int:
    return int(rows(db, "SELECT count(*) FROM generations")[0][0])


@contextmanager
def worker_process(db: Path | str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`steerlab worker` as its own process on a SQLite file or a database URL, killed at the end."""
    command = [sys.executable, "-m", "engine", "worker", "--db", str(db), *args]
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **FAST}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def texts(store: Store) -> dict[tuple[str, int, int], str]:
    return {(g["variant"], g["prompt_index"], g["sample"]): g["text"] for g in export_data(store, NAME)["generations"]}


@needs_models
def test_a_killed_worker_s_run_is_taken_over_and_ends_as_if_never_interrupted(tmp_path: Path) -> None:
    db = mood_store(tmp_path, "kill.db", samples=2, tokens=16, prompts=4)
    store = Store(str(db))
    run_id = enqueue(store, NAME, RunOptions(batch_size=4, device="cpu"))
    with worker_process(db) as first:
        wait_for(lambda: generations(db) >= 8 or first.poll() is not None, 120, "the first batches")
        assert first.poll() is None, first.stdout.read() if first.stdout else ""
        first.send_signal(signal.SIGKILL)
        first.wait()
    partial = generations(db)
    assert 8 <= partial < 72 and partial % 4 == 0, "only whole batches are stored"
    with worker_process(db) as second:
        wait_for(
            lambda: status(store, NAME).state in ("done", "failed") or second.poll() is not None, 180, "the takeover"
        )
        second.send_signal(signal.SIGTERM)  # a soft stop: it is idle now, so it exits at once
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 0, out
    assert "taken over" in out
    s = status(store, NAME)
    assert (s.state, s.run_id, s.attempts, s.done, s.total) == ("done", run_id, 2, 72, 72), s
    keys = rows(db, "SELECT variant_id, prompt_id, sample_index FROM generations")
    assert len(keys) == len(set(keys)) == 72, "nothing lost, nothing duplicated"
    assert rows(db, "SELECT count(*) FROM runs") == [(1,)]

    straight = Store(str(mood_store(tmp_path, "straight.db", samples=2, tokens=16, prompts=4)))
    run_stored(straight, NAME, RunOptions(batch_size=7, device="cpu"))
    assert texts(store) == texts(straight), "per-row seeds: the takeover changes no text"


@needs_models
def test_two_worker_processes_racing_for_one_queued_run_claim_it_once(tmp_path: Path) -> None:
    db = mood_store(tmp_path, "race.db", samples=1, tokens=4, prompts=2)
    store = Store(str(db))
    enqueue(store, NAME, RunOptions(device="cpu"))
    with worker_process(db, "--once") as a, worker_process(db, "--once") as b:
        out_a, _ = a.communicate(timeout=180)
        out_b, _ = b.communicate(timeout=180)
    assert a.returncode == b.returncode == 0, out_a + out_b
    assert (out_a + out_b).count("claimed run 1 ") == 1, out_a + out_b
    assert rows(db, "SELECT status, attempts FROM runs") == [("done", 1)]
    keys = rows(db, "SELECT variant_id, prompt_id, sample_index FROM generations")
    assert len(keys) == len(set(keys)) == 18


@needs_models
def test_the_run_goes_on_while_the_dashboard_restarts(tmp_path: Path) -> None:
    from tests.browser import dashboard

    db = mood_store(tmp_path, "dash.db", samples=2, tokens=16, prompts=4)
    store = Store(str(db))
    with worker_process(db) as worker:
        with dashboard(db, tmp_path):
            enqueue(store, NAME, RunOptions(batch_size=4, device="cpu"))  # what the Run page's button does
            wait_for(lambda: generations(db) >= 4, 120, "the first batch")
        # The dashboard's server process has ended here, with the run still going (generating, or
        # already measuring on a fast machine): it lives in the worker, not in the web server.
        assert worker.poll() is None and status(store, NAME).state == "running"
        with dashboard(db, tmp_path):
            wait_for(lambda: status(store, NAME).state != "running", 180, "the run's end")
    s = status(store, NAME)
    assert (s.state, s.done, s.attempts) == ("done", 72, 1)


@needs_models
@pytest.mark.both_stores
def test_a_failed_run_keeps_its_error_and_traceback_for_steerlab_status(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(STORIES260K, model)
    data = yaml.safe_load(MOOD_FILE.read_text())
    data.update(model=str(model), prompts=data["prompts"][:1], vectors=[], scorers=[])
    data.pop("statistics", None)  # it names a scorer dropped here
    data.pop("sweep", None)
    data["variants"] = [{"name": "baseline"}]
    path = tmp_path / "gone.yaml"
    path.write_text(yaml.safe_dump(data))
    with store.session() as session:
        save_spec(session, None, load_experiment_file(path))
    shutil.rmtree(model)  # the model folder goes away after the experiment was stored
    enqueue(store, NAME, RunOptions(device="cpu"))
    assert Worker(store, once=True, poll=0.05).run() == 1
    s = status(store, NAME)
    assert s.state == "failed" and str(model) in s.error and "Traceback (most recent call last)" in s.traceback

    assert main(["status", NAME, "--db", store.url]) == 0
    out = capsys.readouterr().out
    assert f"Experiment '{NAME}': failed (run 1)" in out and s.error in out
    assert "traceback:" in out and "load_model" in out


@pytest.mark.both_stores
def test_a_queued_run_whose_experiment_was_deleted_is_dropped(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_mood(store, tmp_path / "gone.yaml")
    enqueue(store, NAME)
    delete_experiment(store, NAME)  # deletes its queued run too
    assert Worker(store, once=True).run() == 0

    store_mood(store, tmp_path / "gone.yaml")  # stored again: a new experiment of the same name
    run_id = enqueue(store, NAME)
    worker = Worker(store, once=True)
    claimed = worker.claim()
    assert claimed is not None and claimed.run_id == run_id
    delete_experiment(store, NAME)  # between the claim and the run's start
    with caplog.at_level(logging.WARNING, logger="service.worker"):
        worker.run_claimed(claimed)  # logs, never raises
    assert f"Run {run_id} was dropped: experiment '{NAME}' was deleted" in caplog.text
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0, "both runs went with it"


def content(target: Path | str) -> list[str] | None:
    if not isinstance(target, Path) or not target.exists():
        return None
    with sqlite3.connect(target) as conn:
        return list(conn.iterdump())


def newer_store(path: Path) -> Path:
    Store(str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    return path


def empty_database(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER)")
    return path


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda tmp: tmp / "missing.db", ["does not exist", "--create"]),
        (lambda tmp: empty_database(tmp / "empty.db"), ["holds no SteerLab store", "STEERLAB_DB"]),
        (lambda tmp: newer_store(tmp / "newer.db"), ["newer SteerLab", "9999"]),
        (lambda tmp: "nosuchdialect://x/y", ["is not usable", "SQLAlchemy URL"]),
    ],
    ids=["missing file", "no schema", "newer store", "unusable url"],
)
def test_a_worker_refuses_a_store_it_cannot_serve_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path | str], fragments: list[str]
) -> None:
    target = make(tmp_path)
    before = content(target)
    assert main(["worker", "--once", "--db", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and err.endswith("."), err
    for fragment in fragments:
        assert fragment in err, err
    assert content(target) == before, "nothing created or changed"


def schema(url: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A PostgreSQL database's tables, and its alembic version row if it has one."""
    store_engine = create_engine(url)
    try:
        tables = sorted(inspect(store_engine).get_table_names())
        with store_engine.connect() as conn:
            versions = []
            if "alembic_version" in tables:
                versions = [tuple(r) for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
        return tables, versions
    finally:
        store_engine.dispose()


@pytest.mark.parametrize("case", ["no schema", "newer store"])
def test_a_worker_refuses_a_postgresql_store_it_cannot_serve_in_one_sentence(
    postgres: PostgresServer, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    if case == "no schema":
        url, fragments, change = (
            postgres.new_database(),
            ["holds no SteerLab store", "STEERLAB_DB"],
            "CREATE TABLE notes (id INTEGER)",
        )
    else:
        url, fragments, change = (
            postgres.new_store_url(),
            ["newer SteerLab", "9999"],
            "UPDATE alembic_version SET version_num = '9999'",
        )
    changer = create_engine(url)
    with changer.begin() as conn:
        conn.execute(text(change))
    changer.dispose()
    try:
        before = schema(url)
        assert main(["worker", "--once", "--db", url]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and err.endswith("."), err
        for fragment in fragments:
            assert fragment in err, err
        assert schema(url) == before, "nothing created or changed"
    finally:
        postgres.drop(url)
