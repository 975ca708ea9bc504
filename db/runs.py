"""The run queue: queued runs, leases, heartbeats, claims, cancel requests.

A run is a row of ``runs``. It is 'queued' until a worker claims it, 'running' while a
worker (or a foreground ``steerlab run``) holds its lease, and then done, cancelled,
failed or interrupted. Whoever runs it renews ``lease_expires_at`` with each heartbeat;
a running row whose lease has expired belongs to a process that died, and may be taken
over. The partial unique index ``one_active_run_per_experiment`` lets the database itself
refuse a second queued-or-running run of an experiment, on every host.

Every claim is one conditional UPDATE whose row count says whether this caller won, so
two workers racing for one run can never both get it.

Functions take an open :class:`Session`; the caller decides the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from db.schema import ACTIVE_RUN_STATES, Experiment, Generation, Run, utcnow


@dataclass(frozen=True)
class ClaimedRun:
    """A run this caller now holds the lease of."""

    run_id: int
    experiment_id: int
    experiment: str  # its name
    options_json: str
    attempts: int  # claims so far, this one included: 2 or more means it was taken over


def _expired(now: datetime) -> ColumnElement[bool]:
    # A running row without a lease was left by a SteerLab before leases (see migration 0004).
    return and_(Run.status == "running", or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now))


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(and_(Run.status == "queued", Run.cancel_requested.is_(False)), _expired(now))


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def active_run(session: Session, experiment_id: int) -> Run | None:
    """The experiment's queued or running run (the database allows at most one)."""
    return session.scalar(
        select(Run).where(Run.experiment_id == experiment_id, Run.status.in_(ACTIVE_RUN_STATES)).limit(1)
    )


def latest_run(session: Session, experiment_id: int) -> Run | None:
    return session.scalar(select(Run).where(Run.experiment_id == experiment_id).order_by(Run.id.desc()).limit(1))


def enqueue_run(
    session: Session, experiment_id: int, total: int, done: int, options_json: str, requested_by: str
) -> Run:
    """A queued run; raises IntegrityError (at flush) when the experiment already has an active run."""
    run = Run(
        experiment_id=experiment_id,
        status="queued",
        total_units=total,
        done_units=done,
        start_done=done,
        options_json=options_json,
        requested_by=requested_by[:320],
        attempts=0,
        owner="",
    )
    session.add(run)
    session.flush()
    return run


def start_run(
    session: Session,
    experiment: Experiment,
    total: int,
    done: int,
    batch_size: int,
    device: str,
    dtype: str,
    owner: str,
    lease_seconds: float = 60.0,
    options_json: str = "{}",
) -> Run:
    """A run that starts at once, held by ``owner``; raises IntegrityError when another run is active."""
    now = utcnow()
    run = Run(
        owner=owner[:200],
        experiment_id=experiment.id,
        status="running",
        total_units=total,
        done_units=done,
        start_done=done,
        batch_size=batch_size,
        device=device[:32],
        dtype=dtype[:32],
        attempts=1,
        heartbeat_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        options_json=options_json,
    )
    session.add(run)
    session.flush()
    return run


def claim_run(session: Session, run_id: int, owner: str, lease_seconds: float) -> bool:
    """Take run ``run_id`` if it is queued or its lease has expired; False if someone else got it."""
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, _claimable(now))
        .values(
            status="running",
            owner=owner[:200],
            heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Run.attempts + 1,
            updated_at=now,
            finished_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def claimable_runs(session: Session, limit: int = 20) -> list[int]:
    """Ids of runs a worker may claim now, oldest first."""
    return list(session.scalars(select(Run.id).where(_claimable(utcnow())).order_by(Run.id).limit(limit)))


def claimed(session: Session, run_id: int) -> ClaimedRun | None:
    row = session.execute(
        select(Run.id, Run.experiment_id, Experiment.name, Run.options_json, Run.attempts)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Run.id == run_id)
    ).first()
    return None if row is None else ClaimedRun(row[0], row[1], row[2], row[3], row[4])


def interrupt_expired(session: Session, run_id: int, reason: str) -> bool:
    """Mark a running run whose lease expired as interrupted; False if it is alive or gone."""
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, _expired(now))
        .values(status="interrupted", error=reason, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def cancel_queued(session: Session, run_id: int) -> bool:
    """Cancel a run that has not started; False if a worker claimed it meanwhile (or it is gone)."""
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def cancel_stale_queued(session: Session) -> int:
    """Queued runs asked to stop before anyone claimed them become cancelled (they never start)."""
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.status == "queued", Run.cancel_requested.is_(True))
        .values(status="cancelled", finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def renew_lease(session: Session, run_id: int, owner: str, lease_seconds: float) -> bool:
    """A heartbeat: extend the lease; False if the run is no longer this owner's (taken over, deleted, ended)."""
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.owner == owner[:200], Run.status == "running")
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def held_by(session: Session, run_id: int, owner: str) -> bool:
    """Whether the run is running under ``owner`` (not taken over, ended or deleted)."""
    found = session.execute(select(Run.id).where(Run.id == run_id, Run.owner == owner[:200], Run.status == "running"))
    return found.first() is not None


def units_done(session: Session, run_id: int) -> int:
    """How many of the run's units are stored (its progress, as every shard's commits advance it)."""
    return int(session.execute(select(Run.done_units).where(Run.id == run_id)).scalar() or 0)


def finish_run(
    session: Session, run_id: int, status: str, error: str = "", traceback: str = "", owner: str | None = None
) -> bool:
    """Store how a run ended; with ``owner``, only while that owner still holds it. False if nothing changed."""
    now = utcnow()
    query = update(Run).where(Run.id == run_id)
    if owner is not None:
        query = query.where(Run.owner == owner[:200], Run.status == "running")
    result = session.execute(
        query.values(
            status=status, error=error, traceback=traceback, finished_at=now, updated_at=now, lease_expires_at=None
        ).execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def release_run(session: Session, run_id: int, owner: str) -> bool:
    """Hand a run back to the queue (its worker is stopping); another worker resumes it."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.owner == owner[:200], Run.status == "running")
        .values(status="queued", owner="", lease_expires_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def restart_counts(session: Session, run_id: int, total: int, done: int, batch_size: int) -> None:
    """A claimed run's progress as of its (re)start: its rate counts from here."""
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(total_units=total, done_units=done, start_done=done, batch_size=batch_size, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def request_cancel(session: Session, run_id: int) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))


def cancel_requested(session: Session, run_id: int) -> bool:
    return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def run_exists(session: Session, run_id: int) -> bool:
    return session.scalar(select(Run.id).where(Run.id == run_id)) is not None


def set_run_phase(session: Session, run_id: int, phase: str) -> None:
    """What the run is doing now ("generating", "scoring", ...); not a progress tick (updated_at stays)."""
    session.execute(update(Run).where(Run.id == run_id).values(phase=phase[:32]))


def set_run_hardware(session: Session, run_id: int, device: str, dtype: str) -> None:
    """The device and dtype, once the run has loaded its model (the row is stored before that)."""
    session.execute(update(Run).where(Run.id == run_id).values(device=device[:32], dtype=dtype[:32]))


def run_generation_time(session: Session, run_id: int) -> tuple[int, float]:
    """(generations, summed wall seconds of their batches) stored by one run."""
    count, seconds = session.execute(
        select(func.count(), func.sum(Generation.seconds)).where(Generation.run_id == run_id)
    ).one()
    return int(count or 0), float(seconds or 0.0)


@dataclass(frozen=True)
class QueueHealth:
    """Whether queued runs wait for a worker that is not there."""

    queued: int
    oldest_queued_seconds: float
    live_runs: int  # running runs whose lease has not expired (a worker is alive)


def queue_health(session: Session) -> QueueHealth:
    now = utcnow()
    queued, oldest = session.execute(select(func.count(), func.min(Run.updated_at)).where(Run.status == "queued")).one()
    live = session.scalar(
        select(func.count()).where(
            Run.status == "running", Run.lease_expires_at.is_not(None), Run.lease_expires_at >= now
        )
    )
    waited = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
    return QueueHealth(int(queued or 0), waited, int(live or 0))


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
