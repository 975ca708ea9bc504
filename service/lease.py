"""A run's lease: heartbeats from a background thread while the run works.

Whoever runs a run (a worker, or a foreground ``steerlab run``) holds a lease on its row
that expires ``lease_seconds`` after the last heartbeat. A thread renews it every third of
that time, so a run whose process is killed (kill -9, a lost host) is free for another
worker once the lease has run out, and a live run is never taken over. The intervals come
from the environment so that tests (and impatient teams) can shorten them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from db import runs
from db.store import Store
from engine.errors import SteerLabError

log = logging.getLogger(__name__)

LEASE_ENV = "STEERLAB_LEASE_SECONDS"
POLL_ENV = "STEERLAB_POLL_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_POLL_SECONDS = 2.0


def _seconds(variable: str, default: float) -> float:
    raw = os.environ.get(variable, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise SteerLabError(f"{variable}={raw!r} is not a positive number of seconds; set it like {variable}=30.")
    return value


def lease_seconds() -> float:
    """How long a run stays held without a heartbeat (``STEERLAB_LEASE_SECONDS``, default 60)."""
    return _seconds(LEASE_ENV, DEFAULT_LEASE_SECONDS)


def poll_seconds() -> float:
    """How often an idle worker looks for queued runs (``STEERLAB_POLL_SECONDS``, default 2)."""
    return _seconds(POLL_ENV, DEFAULT_POLL_SECONDS)


def owner_name(role: str = "") -> str:
    """Who holds a run, as shown by ``steerlab status``: host:pid, plus the thread for a second holder in one process."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    if threading.current_thread() is not threading.main_thread():
        name += f":{threading.get_ident()}"
    return f"{name} ({role})" if role else name


class Heartbeat:
    """Renews a run's lease from a daemon thread until stopped; ``lost`` once the run is no longer ours."""

    def __init__(self, store: Store, run_id: int, owner: str, lease: float) -> None:
        self._store, self._run_id, self._owner, self._lease = store, run_id, owner, lease
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    @property
    def lost(self) -> bool:
        """The run was taken over, deleted or ended by someone else: stop working on it."""
        return self._lost.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                with self._store.session() as session:
                    ours = runs.renew_lease(session, self._run_id, self._owner, self._lease)
            except Exception:  # a busy or briefly unreachable database: try again at the next beat
                log.warning("Heartbeat of run %s failed; retrying", self._run_id, exc_info=True)
                continue
            if not ours:
                log.warning("Run %s is no longer held by %s (taken over, deleted or ended)", self._run_id, self._owner)
                self._lost.set()
                return


def finish_claimed_run(
    store: Store, run_id: int, owner: str, status: str, error: str, trace: str, lost: bool, requeue: bool
) -> str:
    """Store how a run (generation or judge) ended, unless it is no longer ours; returns the status it ended
    with: "queued" when a stopped worker hands it back, "interrupted" when another holds it now."""
    if lost:  # another worker holds it now (or it was deleted): its row is not ours to write
        return "interrupted"
    with store.session() as session:
        if status == "cancelled" and requeue and runs.release_run(session, run_id, owner):
            return "queued"
        if not runs.finish_run(session, run_id, status, error, trace, owner=owner):
            return "interrupted" if runs.run_exists(session, run_id) else "deleted"
        if status == "done":
            runs.set_run_phase(session, run_id, "")
    return status
