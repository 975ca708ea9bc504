"""Who may do what: identities, roles per experiment, rater links.

Without sign-in configured SteerLab is a single-user tool on 127.0.0.1: the one local user
owns everything. With sign-in (the dashboard's OIDC login), each experiment has members:

- owner: everything (variants, runs, sweeps, members, rater link, delete, audit log);
- analyst: Compare, Report, Adaptation, Playground and the exports;
- rater: Rate only, never the variant names unless the owner reveals them, never the exports.

Whoever creates an experiment owns it; operators listed in ``STEERLAB_ADMINS``
(comma-separated e-mail addresses) own every experiment. A rater link carries a secret
token; a signed-in user who opens it becomes a rater of that one experiment.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import ROLES as ROLES  # re-exported: pages take the role names from here
from db.schema import Experiment, Membership
from db.store import Store
from engine.errors import SteerLabError
from service import audit
from service.catalog import get_experiment

LOCAL_USER = "local user"


class AccessDenied(SteerLabError):
    """The signed-in user's role does not allow this; the message says which role would."""


@dataclass(frozen=True)
class Identity:
    user: str  # the sign-in's e-mail address, or LOCAL_USER
    signed_in: bool  # False: no sign-in configured, the single local user owns everything

    @property
    def admin(self) -> bool:
        return not self.signed_in or self.user.lower() in operator_admins()


LOCAL = Identity(LOCAL_USER, signed_in=False)


def operator_admins() -> set[str]:
    return {a.strip().lower() for a in os.environ.get("STEERLAB_ADMINS", "").split(",") if a.strip()}


def at_least(role: str | None, needed: str) -> bool:
    """Whether ``role`` includes what ``needed`` may do (owner > analyst > rater)."""
    return role is not None and ROLES.index(role) <= ROLES.index(needed)


def role_in(store: Store, who: Identity, experiment_name: str) -> str | None:
    if who.admin:
        return "owner"
    with store.session() as session:
        experiment = repo.find_experiment(session, experiment_name)
        if experiment is None:
            return None
        return session.scalar(
            select(Membership.role).where(Membership.experiment_id == experiment.id, Membership.user == who.user)
        )


def require(store: Store, who: Identity, experiment_name: str, needed: str, what: str) -> str:
    """The user's role in the experiment, if it allows ``what``; otherwise one sentence saying why not."""
    role = role_in(store, who, experiment_name)
    if not at_least(role, needed):
        have = f"you are a {role} of it" if role else "you are not a member of it"
        allowed = " or ".join(r for r in ROLES if at_least(r, needed))
        raise AccessDenied(
            f"{what.capitalize()} in experiment '{experiment_name}' needs the {allowed} role, and {have}; "
            "ask its owner."
        )
    return str(role)


def visible_experiments(store: Store, who: Identity) -> list[str]:
    """Names of the experiments this user is a member of (all of them for an owner of everything)."""
    with store.session() as session:
        if who.admin:
            return [s.name for s in repo.experiment_summaries(session)]
        rows = session.scalars(
            select(Experiment.name)
            .join(Membership, Membership.experiment_id == Experiment.id)
            .where(Membership.user == who.user)
            .order_by(Experiment.name)
        )
        return list(rows)


def make_owner(session: Session, experiment: Experiment, who: Identity) -> None:
    """Called where an experiment is created: a signed-in creator owns it."""
    if who.signed_in:
        session.add(Membership(experiment_id=experiment.id, user=who.user, role="owner", added_by=who.user))


def members(store: Store, who: Identity, experiment_name: str) -> list[tuple[str, str]]:
    require(store, who, experiment_name, "owner", "seeing the members")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        rows = session.execute(
            select(Membership.user, Membership.role)
            .where(Membership.experiment_id == experiment.id)
            .order_by(Membership.user)
        )
        return [(u, r) for u, r in rows]


def grant(store: Store, who: Identity, experiment_name: str, user: str, role: str) -> None:
    """Give ``user`` (an e-mail address) ``role`` in the experiment, replacing any role they had."""
    require(store, who, experiment_name, "owner", "changing members")
    user = user.strip().lower()
    if "@" not in user or len(user) > 320 or any(not ch.isprintable() or ch.isspace() for ch in user):
        raise SteerLabError(f"'{user[:80]}' is not an e-mail address; type the address the person signs in with.")
    if role not in ROLES:
        raise SteerLabError(f"Role '{role}' is not one of {', '.join(ROLES)}; pick one of those.")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        row = session.scalar(
            select(Membership).where(Membership.experiment_id == experiment.id, Membership.user == user)
        )
        if row is None:
            session.add(Membership(experiment_id=experiment.id, user=user, role=role, added_by=who.user))
        else:
            row.role = role
        audit.record(session, who.user, "member", experiment_name, f"{user} is now {role}")


def revoke(store: Store, who: Identity, experiment_name: str, user: str) -> None:
    require(store, who, experiment_name, "owner", "changing members")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        row = session.scalar(
            select(Membership).where(Membership.experiment_id == experiment.id, Membership.user == user)
        )
        if row is None:
            raise SteerLabError(f"'{user}' is not a member of '{experiment_name}'; reload the page.")
        owners = session.scalars(
            select(Membership.user).where(Membership.experiment_id == experiment.id, Membership.role == "owner")
        ).all()
        if row.role == "owner" and list(owners) == [user]:
            raise SteerLabError(f"'{user}' is the only owner of '{experiment_name}'; make someone else owner first.")
        session.delete(row)
        audit.record(session, who.user, "member", experiment_name, f"{user} removed")


def rater_link_token(store: Store, who: Identity, experiment_name: str, renew: bool = False) -> str:
    """The secret of the experiment's rater link (made on first use; ``renew`` invalidates old links)."""
    require(store, who, experiment_name, "owner", "handing out a rater link")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        if experiment.rater_token is None or renew:
            experiment.rater_token = secrets.token_urlsafe(24)
            audit.record(session, who.user, "rater link", experiment_name, "renewed" if renew else "created")
        return experiment.rater_token


def join_by_link(store: Store, who: Identity, experiment_name: str, token: str) -> str:
    """Make a signed-in user a rater through the experiment's link; returns their role there."""
    role = role_in(store, who, experiment_name)
    if role is not None:
        return role
    with store.session() as session:
        experiment = repo.find_experiment(session, experiment_name)
        if (
            experiment is None
            or experiment.rater_token is None
            or not secrets.compare_digest(experiment.rater_token, token)
        ):
            raise AccessDenied("This rater link is not valid (any more); ask the experiment's owner for a new one.")
        session.add(Membership(experiment_id=experiment.id, user=who.user, role="rater", added_by="rater link"))
        audit.record(session, who.user, "member", experiment_name, f"{who.user} joined as rater through the link")
    return "rater"
