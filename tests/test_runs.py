"""Runs are resumable: a cancelled or killed run continues with nothing lost or duplicated.

The cheap store tests run on SQLite and on PostgreSQL; the resume and kill tests stay on SQLite
files (their full runs are too slow to repeat; tests/test_jobs.py resumes a cancelled run and
tests/test_postgres.py takes over a killed one on PostgreSQL).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from db.store import Store
from engine.errors import SteerLabError
from service.export import export_data
from service.running import RunOptions, run_experiment_file
from tests.conftest import MOOD_FILE, ROOT, needs_models


def small_mood_file(tmp_path: Path, samples: int = 2, tokens: int = 24) -> Path:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=samples, max_new_tokens=tokens)
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class CancelAfter:
    """Cancels once ``batches`` progress reports have arrived."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, -1  # the first report comes before any batch

    def progress(self, _p: object) -> None:
        self.seen += 1

    def is_set(self) -> bool:
        return self.seen >= self.batches


def generation_keys(db: Path) -> list[tuple[int, int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT variant_id, prompt_id, sample_index FROM generations").fetchall()


def wait_until_leases_expire(db: Path, seconds: float = 30) -> None:
    """Until no running run of ``db`` holds a live lease (its process died: no more heartbeats)."""
    deadline = time.monotonic() + seconds
    while True:
        with sqlite3.connect(db) as conn:
            leases = [r[0] for r in conn.execute("SELECT lease_expires_at FROM runs WHERE status = 'running'")]
        now = datetime.now(UTC).replace(tzinfo=None)
        if all(lease is None or datetime.fromisoformat(lease) < now for lease in leases):
            return
        assert time.monotonic() < deadline, f"leases still live: {leases}"
        time.sleep(0.1)


@needs_models  # SQLite only: three full runs of the mood experiment (see the module's docstring)
def test_cancelled_run_resumes_to_the_same_outputs_as_an_uninterrupted_one(tmp_path: Path) -> None:
    path = small_mood_file(tmp_path)
    interrupted = Store(str(tmp_path / "a.db"))
    flag = CancelAfter(batches=2)
    first = run_experiment_file(interrupted, path, RunOptions(batch_size=8, device="cpu"), flag.progress, flag)
    assert first.status == "cancelled"
    assert len(generation_keys(tmp_path / "a.db")) == 16
    second = run_experiment_file(interrupted, path, RunOptions(batch_size=8, device="cpu"))
    assert (second.status, second.generated, second.total) == ("done", first.total - 16, first.total)
    keys = generation_keys(tmp_path / "a.db")
    assert len(keys) == len(set(keys)) == first.total

    straight = Store(str(tmp_path / "b.db"))
    run_experiment_file(straight, path, RunOptions(batch_size=5, device="cpu"))
    texts_a = {
        (g["variant"], g["prompt_index"], g["sample"]): g["text"]
        for g in export_data(interrupted, "tinystories_mood")["generations"]
    }
    texts_b = {
        (g["variant"], g["prompt_index"], g["sample"]): g["text"]
        for g in export_data(straight, "tinystories_mood")["generations"]
    }
    assert texts_a == texts_b, "per-row seeds make outputs independent of batching and interruption"

    again = run_experiment_file(interrupted, path, RunOptions(device="cpu"))
    assert again.generated == 0 and len(generation_keys(tmp_path / "a.db")) == first.total


@needs_models  # SQLite only: a killed process (see the module's docstring)
def test_run_killed_with_sigkill_continues_without_duplicates(tmp_path: Path) -> None:
    path = small_mood_file(tmp_path, samples=3, tokens=48)
    db = tmp_path / "kill.db"
    # A short lease: the killed run is free for the next one two seconds after its last heartbeat.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STEERLAB_LEASE_SECONDS": "2"}
    command = [
        sys.executable,
        "-m",
        "engine",
        "run",
        str(path),
        "--db",
        str(db),
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if db.exists():
                try:
                    stored = len(generation_keys(db))
                except sqlite3.OperationalError:
                    continue
                if stored >= 8:
                    break
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = generation_keys(db)
    assert 8 <= len(partial) < 270 and len(partial) % 4 == 0, "only whole batches are stored"
    wait_until_leases_expire(db)  # until then, another run of the experiment is refused

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    keys = generation_keys(db)
    assert len(keys) == len(set(keys)) == 10 * 3 * 9
    with sqlite3.connect(db) as conn:
        states = [row[0] for row in conn.execute("SELECT status FROM runs ORDER BY id")]
    assert states == ["interrupted", "done"], "the killed run is marked interrupted when the next one starts"
    with sqlite3.connect(db) as conn:
        error = conn.execute("SELECT error FROM runs WHERE id = 1").fetchone()[0]
    assert "stopped sending heartbeats" in error


@needs_models
@pytest.mark.both_stores
def test_one_run_per_experiment_at_a_time(store: Store, tmp_path: Path) -> None:
    path = small_mood_file(tmp_path, samples=1, tokens=4)
    blocked: list[str] = []

    class TryConcurrent:
        def is_set(self) -> bool:
            if not blocked:
                try:
                    run_experiment_file(store, path, RunOptions(device="cpu"))
                except SteerLabError as exc:
                    blocked.append(str(exc))
            return False

    result = run_experiment_file(store, path, RunOptions(device="cpu"), cancel=TryConcurrent())
    assert result.status == "done"
    assert blocked == [
        "Experiment 'tinystories_mood' already has a queued or running run (run 1); wait for it or cancel it."
    ]


@pytest.mark.both_stores
def test_bad_batch_size(store: Store) -> None:
    with pytest.raises(SteerLabError, match="Batch size 0 is too small"):
        run_experiment_file(store, MOOD_FILE, RunOptions(batch_size=0))
