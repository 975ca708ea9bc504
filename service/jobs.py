"""Background runs for the dashboard: start, watch, cancel, resume.

A run executes in a worker thread of the dashboard's process; its progress lives in the
store (the runs table), so a reloaded page or a second browser tab shows the same live
figures: progress, the phase the run is in (generating, measuring, scoring, ...), and a
failed run's error message. Cancelling sets a flag in the store that the run checks
between decode steps and between phases.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from service.catalog import get_experiment
from service.running import RunOptions, describe_error, run_stored


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
    # What the run does now ("generating", "measuring side effects", "scoring", ...; see
    # service.running.PHASES); a run that stopped keeps the phase it stopped in; "" when done.
    phase: str = ""
    cancel_requested: bool = False  # asked to stop; it does so after its current step

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def running(self) -> bool:
        return self.state == "running"

    def describe(self) -> str:
        """One line for a progress bar: "240 / 240 generations · running · scoring"."""
        line = f"{self.done} / {self.total} generations · {self.state}"
        if self.phase and self.state in ("running", "failed", "cancelled", "interrupted"):
            line += f" · {self.phase}" if self.running else f" while {self.phase}"
        return line


@dataclass(frozen=True)
class VariantHealth:
    """Outputs of one variant that should not be read as ordinary text."""

    variant: str
    generations: int
    non_finite: int  # decoding stopped because its logits became inf/NaN or collapsed
    empty: int  # empty or whitespace-only text (non-finite rows stopped at once are empty too)

    @property
    def ok(self) -> bool:
        return self.non_finite == 0 and self.empty == 0


class RunManager:
    """Worker threads of this process, one per experiment.

    A run's error is stored on its run row (see :func:`status`); the manager keeps only
    errors raised before the run row existed (another process holds the experiment, its
    stored definition is unreadable), which the store cannot hold.
    """

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
                target=self._work,
                args=(store, name, options or RunOptions()),
                name=f"run-{name}",
                daemon=True,
            )
            self._threads[name] = thread
            thread.start()

    def _work(self, store: Store, name: str, options: RunOptions) -> None:
        stored: list[int] = []
        try:
            run_stored(store, name, options, started=stored.append)
        except Exception as exc:
            if not stored:  # otherwise the run row holds the error
                self._errors[name] = describe_error(exc)

    def error(self, name: str) -> str:
        """Why this process's last start of ``name`` failed before its run was stored; "" if it did not."""
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
    """Progress of the experiment as stored now; phase, rate and time left from its latest run.

    The rate is generations per second of decoding (the stored batches' wall time), so the
    time before the first batch (loading, extraction) and after the last (measuring,
    scoring) does not distort it; time left is given only while the run is generating.
    """
    with store.session() as session:
        experiment = get_experiment(session, name)
        total = len(experiment.prompts) * len(experiment.variants) * _samples(experiment.spec_json)
        done = len(repo.done_keys(session, experiment.id))
        run = repo.latest_run(session, experiment.id)
        if run is None:
            return RunStatus("never run", None, done, total, 0.0, None, "", None, None)
        generated, seconds = repo.run_generation_time(session, run.id)
        rate = generated / seconds if seconds > 0 else 0.0
        running = run.status == "running"
        left = (total - done) / rate if rate > 0 and running and run.phase == "generating" else None
        # A finished run with work added since (new variants) is not "done" any more.
        state = "incomplete" if run.status == "done" and done < total else run.status
        return RunStatus(
            state,
            run.id,
            done,
            total,
            rate,
            left,
            run.error,
            _aware(run.started_at),
            _aware(run.updated_at),
            run.phase,
            bool(run.cancel_requested),
        )


def health(store: Store, name: str) -> list[VariantHealth]:
    """Per variant with stored outputs: how many broke down (non-finite) and how many are empty."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        counts = repo.output_health(session, experiment.id)
        return [
            VariantHealth(v.name, c.generations, c.non_finite, c.empty)
            for v in experiment.variants
            if (c := counts.get(v.id)) is not None
        ]


def _samples(spec_json: str) -> int:
    import json

    return int(json.loads(spec_json).get("generation", {}).get("samples_per_prompt", 1))


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
