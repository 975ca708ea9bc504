"""Live A/B deployments: which variants an experiment serves, with what traffic share.

A deployment names an experiment, a baseline variant and arms (variant, weight, kill switch).
Its state lives in the store only (every server replica reads it from there, polling
:func:`deployments_version`), and every change is audited and bumps its ``version``.
Served responses, feedback and pairwise preferences are stored here too; the live
statistics are :mod:`service.live_comparison`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from db import deployments as stored
from db.schema import Deployment as DeploymentRow
from db.schema import DeploymentArm, utcnow
from db.store import Store
from engine.errors import SteerLabError
from engine.traffic import Arm, Assignment, TrafficSplit, check_name, check_weights
from service import audit
from service.access import Identity, require
from service.catalog import get_experiment, stored_spec

__all__ = [
    "Arm",
    "Assignment",
    "Deployment",
    "ServedResponse",
    "assign",
    "create_deployment",
    "deployments_version",
    "end_deployment",
    "get_deployment",
    "list_deployments",
    "record_feedback",
    "record_preference",
    "record_responses",
    "resume_variant",
    "set_weights",
    "stop_variant",
    "user_key",
]


@dataclass(frozen=True)
class Deployment:
    name: str  # [A-Za-z0-9_.-], no "/", unique in the store
    experiment: str
    baseline: str  # the variant killed arms fall back to
    arms: tuple[Arm, ...]
    show_variant: bool  # False (default): responses are blind (no variant header)
    live: bool
    version: int  # this deployment's own count: 1 when created, +1 per change; servers poll deployments_version()

    def split(self) -> TrafficSplit:
        return TrafficSplit(self.name, self.baseline, self.arms)


@dataclass(frozen=True)
class ServedResponse:
    response_id: str  # the id the client saw ("chatcmpl-…" / "cmpl-…"); unique
    experiment: str | None
    deployment: str | None
    assigned_variant: str | None
    served_variant: str | None  # None for a per-request steering spec (see steering_json)
    steering_json: str  # the request's steering spec as JSON ("" when none), "off" when switched off
    user_key: str  # sha256 hex of the OpenAI `user` field ("" without one); never the raw value
    endpoint: str  # "chat" | "completions"
    request_text: str  # the prompt / messages as JSON
    response_text: str
    prompt_tokens: int
    completion_tokens: int
    first_token_seconds: float
    latency_seconds: float
    finish_reason: str
    created_at: datetime


# Variants a single loaded model cannot serve: each needs its own trained weights.
TRAINED_KINDS = ("lora", "finetune")
MAX_COMMENT_CHARS = 4000
ENDPOINTS = ("chat", "completions")


def as_deployment(row: DeploymentRow) -> Deployment:
    return Deployment(
        name=row.name,
        experiment=row.experiment.name,
        baseline=row.baseline.name,
        arms=tuple(Arm(a.variant.name, a.weight, a.stopped) for a in row.arms),
        show_variant=row.show_variant,
        live=row.live,
        version=row.version,
    )


def deployment_row(session: Session, name: str) -> DeploymentRow:
    row = stored.find_deployment(session, name)
    if row is None:
        known = ", ".join(d.name for d in stored.deployments_of(session)) or "none yet"
        raise SteerLabError(
            f"No deployment named '{name}' is stored (stored: {known}); check the name with `steerlab deploy list`."
        )
    return row


def _servable(kinds: Mapping[str, str], controls: Mapping[str, str], variant: str, role: str) -> None:
    if variant in controls:
        raise SteerLabError(
            f"Variant '{variant}' is a null-arm control of '{controls[variant]}', made for offline comparison, not "
            "for real users; leave it out of the deployment."
        )
    if kinds[variant] in TRAINED_KINDS:
        todo = "choose another baseline" if role == "baseline" else "leave it out of the weights"
        raise SteerLabError(
            f"Variant '{variant}' is a {kinds[variant]} variant, which needs its own trained weights and cannot be "
            f"served by the one loaded model; {todo}."
        )


def _changing(store: Store, who: Identity, name: str, what: str) -> str:
    """The deployment's experiment, once the user may change it; a deployment that ended is refused."""
    with store.session() as session:
        row = deployment_row(session, name)
        experiment, live = row.experiment.name, row.live
    require(store, who, experiment, "owner", what)
    if not live:
        raise SteerLabError(f"Deployment '{name}' has ended; create a new deployment to serve traffic again.")
    return experiment


def create_deployment(
    store: Store,
    who: Identity,
    name: str,
    experiment: str,
    weights: Mapping[str, float],
    baseline: str | None = None,
    show_variant: bool = False,
) -> Deployment:
    """A live deployment of ``experiment``'s variants with these traffic weights; the baseline is the
    experiment's baseline variant unless named, and must be one of the weighted arms.

    Refused: a name clients' ``model`` would resolve to something else first (a stored
    experiment, the model id; ``EXPERIMENT/VARIANT`` has a "/", which names never do), and
    null-arm controls as arms (they are for offline comparison, not for real users)."""
    check_name(name)
    require(store, who, experiment, "owner", "deploying variants")
    with store.session() as session:
        if stored.find_deployment(session, name) is not None:
            raise SteerLabError(f"A deployment named '{name}' already exists; choose another name.")
        experiment_row = get_experiment(session, experiment)
        if stored.experiment_exists(session, name):
            raise SteerLabError(
                f"Deployment name '{name}' is the name of an experiment, which clients' `model` would reach "
                "instead; choose another name."
            )
        spec = stored_spec(experiment_row)
        if name == spec.model:
            raise SteerLabError(
                f"Deployment name '{name}' is the id of the model it serves, which clients' `model` would reach "
                "instead; choose another name."
            )
        kinds = {v.name: v.kind for v in spec.variants}
        controls = {v.name: v.control_of for v in spec.variants if v.control_of}
        variants = stored.variants_by_name(session, experiment_row.id)
        checked = check_weights(weights, [v for v in kinds if v in variants])
        for variant in checked:
            _servable(kinds, controls, variant, "weights")
        if baseline is None:
            baseline = next((v for v, kind in kinds.items() if kind == "baseline" and v in variants), None)
            if baseline is None:
                raise SteerLabError(
                    f"Experiment '{experiment}' has no variant of kind baseline for stopped arms to fall back to; "
                    "name one with --baseline."
                )
        elif baseline not in variants:
            raise SteerLabError(
                f"Baseline '{baseline}' is not a variant of experiment '{experiment}' (it has: {', '.join(kinds)})."
            )
        _servable(kinds, controls, baseline, "baseline")
        if baseline not in checked:
            # Without traffic of its own the baseline has no users to compare the arms with.
            raise SteerLabError(
                f"Baseline '{baseline}' has no weight, so the arms would have nothing to be compared with; give it "
                f"one (like {baseline}=50; 0 keeps it to stopped arms' traffic)."
            )
        row = DeploymentRow(
            name=name,
            experiment_id=experiment_row.id,
            baseline_variant_id=variants[baseline].id,
            show_variant=show_variant,
            live=True,
            version=1,
            created_by=who.user,
        )
        session.add(row)
        session.flush()
        for position, (variant, weight) in enumerate(checked.items()):
            session.add(_new_arm(row.id, variants[variant].id, position, weight))
        audit.record(session, who.user, "deployed", experiment, f"deployment {name}: {_weights_text(checked)}")
        session.flush()
        session.refresh(row)
        return as_deployment(row)


def _new_arm(deployment_id: int, variant_id: int, position: int, weight: float) -> DeploymentArm:
    """A running arm (not stopped) of a deployment, at ``position`` in its list."""
    return DeploymentArm(
        deployment_id=deployment_id, variant_id=variant_id, position=position, weight=weight, stopped=False
    )


def _weights_text(weights: Mapping[str, float]) -> str:
    return ",".join(f"{v}={w:g}" for v, w in weights.items())


def set_weights(store: Store, who: Identity, name: str, weights: Mapping[str, float]) -> Deployment:
    """New traffic weights; arms left out get weight 0 (kept for their statistics, sent nothing).
    Users keep their arm where the cumulative weights around them stay."""
    experiment = _changing(store, who, name, "changing a deployment's weights")
    with store.session() as session:
        row = deployment_row(session, name)
        spec = stored_spec(row.experiment)
        kinds = {v.name: v.kind for v in spec.variants}
        controls = {v.name: v.control_of for v in spec.variants if v.control_of}
        variants = stored.variants_by_name(session, row.experiment_id)
        checked = check_weights(weights, [v for v in kinds if v in variants])
        for variant in checked:
            _servable(kinds, controls, variant, "weights")
        existing = {a.variant.name: a for a in row.arms}
        for arm in row.arms:
            arm.weight = checked.get(arm.variant.name, 0.0)
        position = max((a.position for a in row.arms), default=-1)
        for variant, weight in checked.items():
            if variant not in existing:
                position += 1
                session.add(_new_arm(row.id, variants[variant].id, position, weight))
        row.version += 1
        audit.record(session, who.user, "changed", experiment, f"deployment {name} weights: {_weights_text(checked)}")
        session.flush()
        session.refresh(row)
        return as_deployment(row)


def _switch(store: Store, who: Identity, name: str, variant: str, stop: bool) -> Deployment:
    verb = "stopping" if stop else "resuming"
    experiment = _changing(store, who, name, f"{verb} a deployment's variant")
    with store.session() as session:
        row = deployment_row(session, name)
        arm = stored.arm_of(row, variant)
        if arm is None:
            arms = ", ".join(a.variant.name for a in row.arms)
            raise SteerLabError(f"Deployment '{name}' has no arm '{variant}' (its arms: {arms}).")
        if stop and variant == row.baseline.name:
            raise SteerLabError(
                f"Variant '{variant}' is the baseline of deployment '{name}', where stopped arms' traffic goes; "
                "set its weight to 0 instead."
            )
        if arm.stopped == stop:
            return as_deployment(row)  # pressing the switch twice changes nothing
        arm.stopped = stop
        arm.stopped_at = utcnow() if stop else None
        arm.stopped_by = who.user if stop else ""
        row.version += 1
        action = "stopped variant" if stop else "resumed variant"
        audit.record(session, who.user, action, experiment, f"deployment {name}: {variant}")
        session.flush()
        session.refresh(row)
        return as_deployment(row)


def stop_variant(store: Store, who: Identity, name: str, variant: str) -> Deployment:
    """The kill switch: the arm's users are served the baseline from the servers' next poll on."""
    return _switch(store, who, name, variant, stop=True)


def resume_variant(store: Store, who: Identity, name: str, variant: str) -> Deployment:
    return _switch(store, who, name, variant, stop=False)


def end_deployment(store: Store, who: Identity, name: str) -> Deployment:
    """Stop serving the deployment (requests naming it are refused); its responses and feedback stay."""
    experiment = _changing(store, who, name, "ending a deployment")
    with store.session() as session:
        row = deployment_row(session, name)
        row.live = False
        row.version += 1
        audit.record(session, who.user, "ended deployment", experiment, f"deployment {name}")
        session.flush()
        session.refresh(row)
        return as_deployment(row)


def get_deployment(store: Store, name: str) -> Deployment:
    with store.session() as session:
        return as_deployment(deployment_row(session, name))


def list_deployments(store: Store, experiment: str | None = None) -> list[Deployment]:
    with store.session() as session:
        experiment_id = None if experiment is None else get_experiment(session, experiment).id
        return [as_deployment(r) for r in stored.deployments_of(session, experiment_id)]


def deployments_version(store: Store) -> int:
    """A number that changes whenever any deployment is created, changed or removed (servers poll it)."""
    with store.session() as session:
        total, count = stored.version_stamp(session)
    return total * 1_000_000 + count


def assign(deployment: Deployment, user: str | None) -> Assignment:
    """Sticky per user (a hash of deployment name and user) while the weights stay; random without a user."""
    return deployment.split().assign(user)


def user_key(user: str | None) -> str:
    """What is stored of an OpenAI ``user`` field: its sha256 hex ("" without one), never the raw value."""
    return hashlib.sha256(user.encode()).hexdigest() if user else ""


def _check_response(row: ServedResponse) -> None:
    if not row.response_id or len(row.response_id) > 100:
        raise SteerLabError(
            f"Response id {row.response_id[:40]!r} is not 1 to 100 characters; give the id the client saw."
        )
    if row.endpoint not in ENDPOINTS:
        raise SteerLabError(f"Endpoint {row.endpoint!r} is not one of {', '.join(ENDPOINTS)}.")


def record_responses(store: Store, rows: Sequence[ServedResponse]) -> None:
    """Store served responses in one transaction; a response_id already stored is skipped."""
    for row in rows:
        _check_response(row)
    with store.session() as session:
        deployments: dict[str, DeploymentRow] = {}
        experiments: dict[str, int] = {}
        variant_ids: dict[int, dict[str, int]] = {}
        new: list[stored.NewServedResponse] = []
        for row in rows:
            deployment_id = experiment_id = None
            if row.deployment is not None:
                if row.deployment not in deployments:
                    deployments[row.deployment] = deployment_row(session, row.deployment)
                deployment_id = deployments[row.deployment].id
                experiment_id = deployments[row.deployment].experiment_id
            elif row.experiment is not None:
                if row.experiment not in experiments:
                    experiments[row.experiment] = get_experiment(session, row.experiment).id
                experiment_id = experiments[row.experiment]
            key = experiment_id or 0
            if key not in variant_ids:
                found = stored.variants_by_name(session, experiment_id) if experiment_id else {}
                variant_ids[key] = {n: v.id for n, v in found.items()}
            named = variant_ids[key]

            new.append(
                stored.NewServedResponse(
                    response_id=row.response_id,
                    deployment_id=deployment_id,
                    experiment_id=experiment_id,
                    assigned_variant_id=_variant_id(named, row.assigned_variant, row.response_id),
                    served_variant_id=_variant_id(named, row.served_variant, row.response_id),
                    steering_json=row.steering_json,
                    user_key=row.user_key,
                    endpoint=row.endpoint,
                    request_text=row.request_text,
                    response_text=row.response_text,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    first_token_seconds=row.first_token_seconds,
                    latency_seconds=row.latency_seconds,
                    finish_reason=row.finish_reason[:16],
                    created_at=row.created_at,
                )
            )
        stored.insert_responses(session, new)


def _variant_id(named: Mapping[str, int], variant: str | None, response_id: str) -> int | None:
    if variant is None:
        return None
    if variant not in named:
        raise SteerLabError(
            f"Response {response_id} names variant '{variant}', which its experiment lacks; "
            "store the experiment's variant names."
        )
    return named[variant]


def _stored_response(session: Session, response_id: str) -> stored.StoredResponseKey:
    found = stored.response_keys(session, [response_id]).get(response_id)
    if found is None:
        raise SteerLabError(
            f"No served response has id '{response_id[:100]}'; send the id of a response this server gave."
        )
    return found


def record_feedback(
    store: Store,
    response_id: str,
    *,
    thumbs: str | None = None,
    score: float | None = None,
    user: str | None = None,
    comment: str = "",
) -> None:
    """Thumbs "up"/"down" and/or a score in [0, 1] (0 worst, 1 best) on a served response.

    Feedback comes from the user the response was served to (the unit of the live statistics
    is the served user): a ``user`` other than the response's is refused, and a response served
    without a user takes feedback only without one. So each response has at most one feedback;
    a later one replaces it."""
    if thumbs is None and score is None:
        raise SteerLabError('Feedback needs thumbs ("up" or "down") or a score between 0 and 1; it had neither.')
    if thumbs is not None and thumbs not in ("up", "down"):
        raise SteerLabError(f'Thumbs {str(thumbs)[:40]!r} is neither "up" nor "down"; send one of them.')
    if score is not None and not (
        isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score) and 0 <= score <= 1
    ):
        raise SteerLabError(f"Score {str(score)[:40]} is not a number between 0 and 1; send 0 (worst) to 1 (best).")
    if len(comment) > MAX_COMMENT_CHARS:
        raise SteerLabError(f"The comment has {len(comment)} characters, more than {MAX_COMMENT_CHARS}; shorten it.")
    with store.session() as session:
        found = _stored_response(session, response_id)
        _check_rater(found, user, response_id)
        stored.upsert_feedback(
            session, found.row_id, found.user_key, thumbs, None if score is None else float(score), comment
        )


def _check_rater(found: stored.StoredResponseKey, user: str | None, response_id: str) -> None:
    """Feedback and preferences come from the user the response was served to (see record_feedback)."""
    if user_key(user) == found.user_key:
        return
    if found.user_key:
        raise SteerLabError(
            f"Response '{response_id[:100]}' was served to a different user; only the user it was served to may "
            "rate it, so send that request's `user`."
        )
    raise SteerLabError(
        f"Response '{response_id[:100]}' was served without a user, so it takes feedback only without one."
    )


def record_preference(
    store: Store, preferred_id: str, other_id: str, user: str | None = None, tie: bool = False
) -> None:
    """A user preferred one response over another of the same deployment (or called it a tie).

    Only the user who was served both responses may compare them (or, for two responses served
    without a user, a preference without one); one per pair: a later one replaces it."""
    if preferred_id == other_id:
        raise SteerLabError("A preference needs two different responses; both ids were the same.")
    with store.session() as session:
        preferred = _stored_response(session, preferred_id)
        other = _stored_response(session, other_id)
        if preferred.deployment_id is None or preferred.deployment_id != other.deployment_id:
            raise SteerLabError(
                f"Responses '{preferred_id[:100]}' and '{other_id[:100]}' were not served by one deployment; "
                "compare two responses of the same deployment."
            )
        _check_rater(preferred, user, preferred_id)
        _check_rater(other, user, other_id)
        stored.upsert_preference(
            session, preferred.deployment_id, preferred.row_id, other.row_id, preferred.user_key, tie
        )


def deployment_json(deployment: Deployment) -> str:
    """The deployment as JSON (the CLI's --json and the pages' export)."""
    return json.dumps(
        {
            "name": deployment.name,
            "experiment": deployment.experiment,
            "baseline": deployment.baseline,
            "arms": [{"variant": a.variant, "weight": a.weight, "stopped": a.stopped} for a in deployment.arms],
            "show_variant": deployment.show_variant,
            "live": deployment.live,
            "version": deployment.version,
        }
    )
