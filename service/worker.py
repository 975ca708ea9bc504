"""``steerlab worker``: claim queued runs from the store and run them, one at a time.

Any number of workers, on any number of hosts, may share one database URL. A worker
claims a run with one conditional UPDATE (queued, or running with an expired lease), so
two workers never both get it; it renews the lease with heartbeats while the run works
(:mod:`service.lease`) and stores how the run ended, with the traceback of a failure.
A run whose worker died (kill -9, a lost host) is taken over once its lease has expired
and resumes where it stopped: generations are unique per (variant, prompt, sample) and
stored one batch per transaction, so nothing is lost and nothing is duplicated.

Judge runs (``steerlab judge --queue``, the Judge page) are claimed and run the same way,
by :func:`service.judging.run_judge`.

Stopping a worker (its stop event, SIGTERM or Ctrl-C through the command line) stops
its run after the current decode step and hands the run back to the queue.
"""

from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

from db import runs
from db.migrate import SchemaError, current_revision
from db.runs import ClaimedRun
from db.store import Store, StoreError, mask_url, resolve_url
from service.judging import run_judge
from service.lease import lease_seconds, owner_name, poll_seconds
from service.ray_cluster import RayPlan

if TYPE_CHECKING:
    from service.ray_runs import ActorPool
from service.running import RunOptions, describe_error, run_stored

log = logging.getLogger(__name__)


def open_worker_store(url: str | None = None, create: bool = False) -> Store:
    """Open the store a worker serves; unless ``create``, refuse a database without a SteerLab store in it.

    A worker pointed at a mistyped path or an empty database would otherwise create an
    empty store there and wait for runs that are queued somewhere else, silently.
    """
    resolved = resolve_url(url)
    if create:
        return Store(resolved)
    shown = mask_url(resolved)
    where = "point the worker at the store the dashboard uses (--db or STEERLAB_DB), or pass --create to start one"
    try:
        engine = create_engine(resolved)
    except (ArgumentError, ImportError):
        return Store(resolved)  # raises the store's one-sentence error about the URL
    try:
        database = engine.url.database
        on_disk = engine.dialect.name == "sqlite" and database and database != ":memory:"
        if on_disk and not str(database).startswith("file:") and not Path(str(database)).is_file():
            raise StoreError(f"Database file '{database}' does not exist; {where}.")
        revision = current_revision(engine)
    except (OperationalError, DatabaseError, SchemaError):
        return Store(resolved)  # an unopenable database or an unknown schema: the store's own sentence
    finally:
        engine.dispose()
    if revision is None:
        raise StoreError(f"Database '{shown}' holds no SteerLab store (it has no SteerLab tables); {where}.")
    return Store(resolved)  # upgrades an older store (a backup first); refuses a newer one


class Worker:
    """Claims and runs queued runs until ``stop`` is set (or, with ``once``, until none is left)."""

    def __init__(
        self,
        store: Store,
        stop: threading.Event | None = None,
        poll: float | None = None,
        once: bool = False,
        name: str | None = None,
        ray: RayPlan | None = None,
    ) -> None:
        self.store = store
        self.ray = ray  # run claimed runs on this Ray cluster instead of in this process
        self._pool: ActorPool | None = None  # its actors, kept between runs of one model
        self.stop = stop or threading.Event()
        self.poll = poll if poll is not None else poll_seconds()
        self.once = once
        self.name = name or owner_name("worker")

    def run(self) -> int:
        """Work until stopped; returns how many runs this worker processed."""
        log.info(
            "Worker %s serves %s (poll %g s, lease %g s)", self.name, self.store.display_url, self.poll, lease_seconds()
        )
        processed = 0
        while not self.stop.is_set():
            try:
                claimed = self.claim()
            except (OperationalError, DatabaseError) as exc:  # a busy or briefly unreachable database
                log.warning("Could not look for queued runs (%s); trying again in %g s", exc.orig, self.poll)
                claimed = None
            if claimed is None:
                if self.once:
                    break
                if self._pool is not None:
                    self._pool.release_if_idle()
                self.stop.wait(self.poll)
                continue
            self.run_claimed(claimed)
            processed += 1
        if self._pool is not None:
            self._pool.close()
        log.info("Worker %s stopped after %d runs", self.name, processed)
        return processed

    def claim(self) -> ClaimedRun | None:
        """Take the oldest claimable run (queued, or running with an expired lease); None if there is none."""
        lease = lease_seconds()
        with self.store.session() as session:
            runs.cancel_stale_queued(session)  # cancelled before anyone claimed them: they never start
            candidates = runs.claimable_runs(session)
        for run_id in candidates:
            with self.store.session() as session:
                if runs.claim_run(session, run_id, self.name, lease):
                    claimed = runs.claimed(session, run_id)
                    if claimed is not None:
                        return claimed
        return None

    def run_claimed(self, claimed: ClaimedRun) -> None:
        """Run a claimed run to its end; every outcome is stored on the run row and logged, never raised."""
        taken_over = " (taken over from a worker that stopped)" if claimed.attempts > 1 else ""
        log.info("Worker %s claimed run %s of '%s'%s", self.name, claimed.run_id, claimed.experiment, taken_over)
        try:
            options = RunOptions.from_json(claimed.options_json)
            if self.ray is not None:
                self._run_on_ray(claimed, options, self.ray)
                return
            if options.task == "judge":
                run_judge(
                    self.store,
                    claimed.experiment,
                    options.judge,
                    options,
                    cancel=self.stop,
                    claimed=claimed,
                    owner=self.name,
                    requeue_on_stop=True,
                )
                return
            run_stored(
                self.store,
                claimed.experiment,
                options,
                cancel=self.stop,
                claimed=claimed,
                owner=self.name,
                requeue_on_stop=True,
            )
        except Exception as exc:
            self._after_failure(claimed, exc)

    def _run_on_ray(self, claimed: ClaimedRun, options: RunOptions, plan: RayPlan) -> None:
        from service.ray_runs import ActorPool, judge_on_ray, run_on_ray

        if options.task == "judge":
            judge_on_ray(
                self.store,
                claimed.experiment,
                options.judge,
                options,
                plan,
                cancel=self.stop,
                claimed=claimed,
                owner=self.name,
                requeue_on_stop=True,
            )
            return
        if self._pool is None:
            self._pool = ActorPool(plan)
        run_on_ray(
            self.store,
            claimed.experiment,
            options,
            plan,
            cancel=self.stop,
            claimed=claimed,
            owner=self.name,
            requeue_on_stop=True,
            pool=self._pool,
        )

    def _after_failure(self, claimed: ClaimedRun, exc: Exception) -> None:
        with self.store.session() as session:
            if not runs.run_exists(session, claimed.run_id):
                log.warning(
                    "Run %s was dropped: experiment '%s' was deleted (with its runs) before the run ended.",
                    claimed.run_id,
                    claimed.experiment,
                )
                return
            # A failure before the run's own bookkeeping began (an unreadable stored
            # definition) leaves the row running: store it here (a no-op if it was stored).
            runs.finish_run(
                session, claimed.run_id, "failed", describe_error(exc), traceback.format_exc(), owner=self.name
            )
        log.error("Run %s of '%s' failed: %s", claimed.run_id, claimed.experiment, describe_error(exc), exc_info=exc)
