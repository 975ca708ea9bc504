"""Queries of live deployments: their arms, served responses, feedback and preferences.

Functions take an open :class:`Session`; the caller decides the transaction. Writes that two
server replicas may make at the same instant (the same response id after a retry, a user's
second thumbs) are single upserts, so the database settles the race, not the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from db.schema import (
    Deployment,
    DeploymentArm,
    Experiment,
    ResponseFeedback,
    ResponsePreference,
    ServedResponseRecord,
    Variant,
    utcnow,
)


@dataclass(frozen=True)
class NewServedResponse:
    response_id: str
    deployment_id: int | None
    experiment_id: int | None
    assigned_variant_id: int | None
    served_variant_id: int | None
    steering_json: str
    user_key: str
    endpoint: str
    request_text: str
    response_text: str
    prompt_tokens: int
    completion_tokens: int
    first_token_seconds: float
    latency_seconds: float
    finish_reason: str
    created_at: datetime


@dataclass(frozen=True)
class StoredResponseKey:
    row_id: int
    deployment_id: int | None
    user_key: str  # who the response was served to ("" without a user)


@dataclass(frozen=True)
class LiveRow:
    """What the live statistics need of one served response and its feedback (one row per feedback)."""

    response_id: int
    assigned: str | None
    served: str | None
    user_key: str
    completion_tokens: int
    first_token_seconds: float
    latency_seconds: float
    finish_reason: str
    thumbs: str | None
    score: float | None


def find_deployment(session: Session, name: str) -> Deployment | None:
    return session.scalar(select(Deployment).where(Deployment.name == name))


def deployments_of(session: Session, experiment_id: int | None = None) -> list[Deployment]:
    query = select(Deployment).order_by(Deployment.name)
    if experiment_id is not None:
        query = query.where(Deployment.experiment_id == experiment_id)
    return list(session.scalars(query))


def version_stamp(session: Session) -> tuple[int, int]:
    """The sum of the deployments' versions and their number. Each deployment numbers its own
    versions (1 when created, +1 per change), so the sum grows with every change anywhere."""
    total, count = session.execute(
        select(func.coalesce(func.sum(Deployment.version), 0), func.count(Deployment.id))
    ).one()
    return int(total), int(count)


def experiment_exists(session: Session, name: str) -> bool:
    return session.scalar(select(Experiment.id).where(Experiment.name == name)) is not None


def variants_by_name(session: Session, experiment_id: int) -> dict[str, Variant]:
    rows = session.scalars(select(Variant).where(Variant.experiment_id == experiment_id).order_by(Variant.position))
    return {v.name: v for v in rows}


def _insert(session: Session, table: Table) -> Any:
    """An INSERT that can skip or update on a unique conflict (SQLite and PostgreSQL both can)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_responses(session: Session, rows: Sequence[NewServedResponse]) -> int:
    """Insert the responses whose id is not stored yet (a retry after a crash stores nothing twice);
    returns how many were new."""
    table = ServedResponseRecord.__table__
    assert isinstance(table, Table)
    fresh = {r.response_id: r for r in rows}  # one copy per id, even within a batch
    for stored in response_keys(session, list(fresh)):
        fresh.pop(stored)
    values = [dict(vars(r)) for r in fresh.values()]
    if values:
        # Another replica may store the same id between the look above and this insert.
        # One statement with a list of rows: SQLAlchemy sends them as a few multi-row INSERTs.
        statement = _insert(session, table).on_conflict_do_nothing(index_elements=["response_id"])
        session.execute(statement, values)
    return len(values)


def response_keys(session: Session, response_ids: Sequence[str]) -> dict[str, StoredResponseKey]:
    """Stored response id → its row id, deployment row id and user key."""
    r = ServedResponseRecord
    rows = session.execute(
        select(r.response_id, r.id, r.deployment_id, r.user_key).where(r.response_id.in_(list(response_ids)))
    )
    return {rid: StoredResponseKey(row_id, deployment_id, key) for rid, row_id, deployment_id, key in rows}


def upsert_feedback(
    session: Session, response_row_id: int, user_key: str, thumbs: str | None, score: float | None, comment: str
) -> None:
    table = ResponseFeedback.__table__
    assert isinstance(table, Table)
    values = {"thumbs": thumbs, "score": score, "comment": comment, "created_at": utcnow()}
    statement = _insert(session, table).values(response_id=response_row_id, user_key=user_key, **values)
    session.execute(statement.on_conflict_do_update(index_elements=["response_id", "user_key"], set_=values))


def upsert_preference(
    session: Session, deployment_id: int, preferred_id: int, other_id: int, user_key: str, tie: bool
) -> None:
    table = ResponsePreference.__table__
    assert isinstance(table, Table)
    values = {"preferred_id": preferred_id, "other_id": other_id, "tie": tie, "created_at": utcnow()}
    statement = _insert(session, table).values(
        deployment_id=deployment_id,
        pair_low_id=min(preferred_id, other_id),
        pair_high_id=max(preferred_id, other_id),
        user_key=user_key,
        **values,
    )
    session.execute(
        statement.on_conflict_do_update(index_elements=["pair_low_id", "pair_high_id", "user_key"], set_=values)
    )


def live_rows(session: Session, deployment_id: int) -> list[LiveRow]:
    """Every served response of the deployment, once per feedback it got (once, with None, without any)."""
    assigned, served = aliased(Variant), aliased(Variant)
    r = ServedResponseRecord
    rows = session.execute(
        select(
            r.id,
            assigned.name,
            served.name,
            r.user_key,
            r.completion_tokens,
            r.first_token_seconds,
            r.latency_seconds,
            r.finish_reason,
            ResponseFeedback.thumbs,
            ResponseFeedback.score,
        )
        .outerjoin(assigned, assigned.id == r.assigned_variant_id)
        .outerjoin(served, served.id == r.served_variant_id)
        .outerjoin(ResponseFeedback, ResponseFeedback.response_id == r.id)
        .where(r.deployment_id == deployment_id)
        .order_by(r.id)
    )
    return [LiveRow(*tuple(row)) for row in rows]


def preference_rows(session: Session, deployment_id: int) -> list[tuple[str | None, str | None, bool]]:
    """(assigned arm of the preferred response, of the other one, tie) per stored preference; the
    served variant where a response has no assigned arm."""
    preferred, other = aliased(ServedResponseRecord), aliased(ServedResponseRecord)
    preferred_variant, other_variant = aliased(Variant), aliased(Variant)
    rows = session.execute(
        select(preferred_variant.name, other_variant.name, ResponsePreference.tie)
        .join(preferred, preferred.id == ResponsePreference.preferred_id)
        .join(other, other.id == ResponsePreference.other_id)
        .outerjoin(
            preferred_variant,
            preferred_variant.id == func.coalesce(preferred.assigned_variant_id, preferred.served_variant_id),
        )
        .outerjoin(other_variant, other_variant.id == func.coalesce(other.assigned_variant_id, other.served_variant_id))
        .where(ResponsePreference.deployment_id == deployment_id)
    )
    return [(a, b, bool(t)) for a, b, t in rows]


def arm_of(deployment: Deployment, variant_name: str) -> DeploymentArm | None:
    return next((a for a in deployment.arms if a.variant.name == variant_name), None)
