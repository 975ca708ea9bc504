"""The audit log: who created, changed, deleted, rated, exported what, and when.

Events are written in the same transaction as the change they describe, so the log never
claims a change that was rolled back, and a change never happens without its event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.schema import AuditEvent
from db.store import Store


@dataclass(frozen=True)
class Event:
    at: datetime
    actor: str
    action: str
    experiment: str
    detail: str


def record(session: Session, actor: str, action: str, experiment: str, detail: str = "") -> None:
    session.add(AuditEvent(actor=actor[:320], action=action[:32], experiment=experiment[:200], detail=detail[:2000]))


def recent(store: Store, experiment: str | None = None, limit: int = 500) -> list[Event]:
    """Newest first; one experiment's events, or all."""
    with store.session() as session:
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if experiment is not None:
            query = query.where(AuditEvent.experiment == experiment)
        return [Event(e.at, e.actor, e.action, e.experiment, e.detail) for e in session.scalars(query)]
