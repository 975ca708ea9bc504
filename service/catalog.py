"""Experiments in the store: import from a spec, read back as a spec, list, delete."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import Experiment, Vector
from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where
from engine.spec import ExperimentSpec, parse_experiment

# Fields whose change makes stored generations stale.
_DEFINING = ("model", "prompts", "generation", "chat_template", "probe_prompt")


def stored_spec(experiment: Experiment) -> ExperimentSpec:
    """The stored definition, parsed back (file vectors' bytes live in the vectors table)."""
    return parse_experiment(json.loads(experiment.spec_json), Where(f"stored experiment '{experiment.name}'"))


def import_experiment(
    session: Session, spec: ExperimentSpec, source: str, vector_files: dict[str, bytes], replace_existing: bool = False
) -> Experiment:
    """Store a new experiment, or extend a stored one with new vectors and variants.

    A stored experiment with the same name is kept when the new definition only adds
    vectors or variants (or changes scorers and descriptions); any other change would
    make its stored outputs stale, so it needs ``replace_existing``.
    """
    existing = repo.find_experiment(session, spec.name)
    if existing is not None:
        conflict = _conflict(json.loads(existing.spec_json), spec.to_dict())
        if conflict is None:
            _extend(session, existing, spec, vector_files)
            return existing
        if not replace_existing:
            raise SteerLabError(
                f"{source}: experiment '{spec.name}' is already stored with a different {conflict}; "
                "rename the experiment (field name, or --name) or pass --replace to discard its stored results."
            )
        repo.delete_experiment(session, existing)
        session.flush()
    experiment = repo.create_experiment(
        session,
        name=spec.name,
        description=spec.description,
        model_id=spec.model,
        spec=spec.to_dict(),
        definition_hash=spec.definition_hash(),
        prompts=spec.prompts,
        vectors={v.name: v.to_dict() for v in spec.vectors},
        variants=[repo.NewVariant(v.name, v.kind, v.to_dict()) for v in spec.variants],
    )
    _attach_vector_files(experiment, vector_files)
    return experiment


def _conflict(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in _DEFINING:
        if old.get(key) != new.get(key):
            return key.replace("_", " ")
    old_vectors, new_vectors = old.get("vectors", {}), new.get("vectors", {})
    if any(new_vectors.get(name) != value for name, value in old_vectors.items()):
        return "vector definition"
    new_variants = {v["name"]: v for v in new.get("variants", [])}
    if any(new_variants.get(v["name"]) != v for v in old.get("variants", [])):
        return "variant definition (a stored variant was changed or removed)"
    return None


def _extend(session: Session, experiment: Experiment, spec: ExperimentSpec, vector_files: dict[str, bytes]) -> None:
    known_vectors = {v.name for v in experiment.vectors}
    for vector in spec.vectors:
        if vector.name not in known_vectors:
            experiment.vectors.append(Vector(name=vector.name, spec_json=json.dumps(vector.to_dict())))
    _attach_vector_files(experiment, {k: v for k, v in vector_files.items() if k not in known_vectors})
    known_variants = {v.name for v in experiment.variants}
    repo.add_variants(
        session,
        experiment,
        [repo.NewVariant(v.name, v.kind, v.to_dict()) for v in spec.variants if v.name not in known_variants],
    )
    # Keep the stored variant order and append the new ones, like the file lists them.
    merged = spec.to_dict()
    merged["variants"] = [json.loads(v.spec_json) for v in experiment.variants]
    repo.update_experiment_spec(session, experiment, merged, spec.definition_hash())
    session.flush()


def _attach_vector_files(experiment: Experiment, vector_files: dict[str, bytes]) -> None:
    for vector in experiment.vectors:
        if vector.name in vector_files:
            vector.data = vector_files[vector.name]


def list_experiments(store: Store) -> list[repo.ExperimentSummary]:
    with store.session() as session:
        return repo.experiment_summaries(session)


def get_experiment(session: Session, name: str) -> Experiment:
    experiment = repo.find_experiment(session, name)
    if experiment is None:
        known = ", ".join(s.name for s in repo.experiment_summaries(session)) or "none yet"
        raise SteerLabError(
            f"No experiment named '{name}' is stored (stored: {known}); check the name with `python -m engine list`."
        )
    return experiment


def delete_experiment(store: Store, name: str) -> None:
    with store.session() as session:
        repo.delete_experiment(session, get_experiment(session, name))
