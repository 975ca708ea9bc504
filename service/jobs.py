"""Background runs for the dashboard: start, watch, cancel, resume.

A run executes in a worker thread of the dashboard's process; its progress lives in the
store (the runs table), so a reloaded page or a second browser tab shows the same live
figures. Cancelling sets a flag in the store that the run checks between decode steps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from service.catalog import get_experiment
from service.running import RunOptions, run_stored


@dataclass(frozen=True)
class RunStatus:
    state: str  # "never run", "running", "done", "cancelled", "failed", "interrupted"
    run_id: int | None
    done: int
    total: int
    rate: float  # generations per second in the current or last run
    seconds_left: float | None
    error: str
    started_at: datetime | None
    updated_at: datetime | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class RunManager:
    """Worker threads of this process, one per experiment."""

    def __init__(self) -> None:
        self._threads: dict[str, threading.Thread] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, store: Store, name: str, options: RunOptions | None = None) -> None:
        with self._lock:
            thread = self._threads.get(name)
            if thread is not None and thread.is_alive():
                raise SteerLabError(f"Experiment '{name}' is already running; wait for it or cancel it.")
            with store.session() as session:
                get_experiment(session, name)  # a clear error now rather than in the thread
            self._errors.pop(name, None)
            thread = threading.Thread(
                target=self._work, args=(store, name, options or RunOptions()), name=f"run-{name}", daemon=True
            )
            self._threads[name] = thread
            thread.start()

    def _work(self, store: Store, name: str, options: RunOptions) -> None:
        try:
            run_stored(store, name, options)
        except Exception as exc:
            self._errors[name] = str(exc)

    def error(self, name: str) -> str:
        return self._errors.get(name, "")

    def is_alive(self, name: str) -> bool:
        thread = self._threads.get(name)
        return thread is not None and thread.is_alive()

    def join(self, name: str, timeout: float | None = None) -> None:
        thread = self._threads.get(name)
        if thread is not None:
            thread.join(timeout)


def cancel(store: Store, name: str) -> bool:
    """Ask the experiment's active run to stop after its current decode step."""
    with store.session() as session:
        run = repo.active_run(session, get_experiment(session, name).id)
        if run is None:
            return False
        repo.request_cancel(session, run.id)
        return True


def status(store: Store, name: str) -> RunStatus:
    """Progress of the experiment as stored now; rate and time left from its latest run."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        total = len(experiment.prompts) * len(experiment.variants) * _samples(experiment.spec_json)
        done = len(repo.done_keys(session, experiment.id))
        run = repo.latest_run(session, experiment.id)
        if run is None:
            return RunStatus("never run", None, done, total, 0.0, None, "", None, None)
        started, updated = _aware(run.started_at), _aware(run.updated_at)
        now = datetime.now(UTC) if run.status == "running" else updated
        elapsed = (now - started).total_seconds()
        rate = (run.done_units - run.start_done) / elapsed if elapsed > 0 else 0.0
        running = run.status == "running"
        left = (total - done) / rate if rate > 0 and running else None
        # A finished run with work added since (new variants) is not "done" any more.
        state = "incomplete" if run.status == "done" and done < total else run.status
        return RunStatus(state, run.id, done, total, rate, left, run.error, started, updated)


def _samples(spec_json: str) -> int:
    import json

    return int(json.loads(spec_json).get("generation", {}).get("samples_per_prompt", 1))


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
