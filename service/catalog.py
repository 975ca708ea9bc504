"""Experiments in the store: save a spec (creating or syncing rows), read it back, list, delete.

The experiment row keeps the whole spec as JSON; prompts, vectors and variants also have
rows of their own (generations point at them). :func:`save_spec` is the one place that
keeps the two in step: a changed vector loses its extracted data, a changed variant
loses its now-stale generations, a removed one is deleted.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import Experiment, Variant, Vector
from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where
from engine.spec import ExperimentSpec, parse_experiment
from service import audit

# Fields whose change makes every stored generation stale.
_DEFINING = ("model", "prompts", "generation", "chat_template", "probe_prompt")


def stored_spec(experiment: Experiment) -> ExperimentSpec:
    """The stored definition, parsed back (file vectors' bytes live in the vectors table).

    It is validated again, so a definition stored by an older, more lenient SteerLab (a
    coefficient above today's limit, say) is reported in one sentence, not used silently.
    """
    try:
        return parse_experiment(json.loads(experiment.spec_json), Where(f"stored experiment '{experiment.name}'"))
    except SteerLabError as exc:
        raise SteerLabError(
            f"{str(exc).rstrip('.')}; this SteerLab no longer accepts that stored value, so change or delete it "
            "(re-run the experiment file with the value fixed and --replace, or delete the experiment)."
        ) from exc


def save_spec(
    session: Session, experiment: Experiment | None, spec: ExperimentSpec, vector_files: dict[str, bytes] | None = None
) -> Experiment:
    """Create the experiment, or bring a stored one's rows in line with ``spec``."""
    vector_files = vector_files or {}
    data = spec.to_dict()
    if experiment is None:
        experiment = repo.create_experiment(
            session, spec.name, spec.description, spec.model, data, spec.definition_hash(), spec.prompts, {}, []
        )
    elif [p.text for p in experiment.prompts] != list(spec.prompts):
        raise SteerLabError(
            f"Experiment '{experiment.name}' cannot change its prompts; duplicate it to use other prompts."
        )
    experiment.name = spec.name
    experiment.model_id = spec.model
    _sync_vectors(experiment, data["vectors"], vector_files)
    _sync_variants(session, experiment, data["variants"])
    repo.update_experiment_spec(session, experiment, data, spec.definition_hash())
    session.flush()
    return experiment


def _sync_vectors(experiment: Experiment, specs: dict[str, dict[str, Any]], files: dict[str, bytes]) -> None:
    rows = {v.name: v for v in experiment.vectors}
    for name, old in rows.items():
        if name not in specs:
            experiment.vectors.remove(old)
    for name, spec in specs.items():
        text = json.dumps(spec, ensure_ascii=False)
        row = rows.get(name)
        if row is None:
            row = Vector(name=name, spec_json=text)
            experiment.vectors.append(row)
        elif row.spec_json != text:
            row.spec_json, row.data = text, None  # re-extracted on the next run
        if name in files:
            row.data = files[name]


def _sync_variants(session: Session, experiment: Experiment, specs: list[dict[str, Any]]) -> None:
    rows = {v.name: v for v in experiment.variants}
    wanted = {s["name"] for s in specs}
    for name, old in rows.items():
        if name not in wanted:
            experiment.variants.remove(old)
    session.flush()
    for position, spec in enumerate(specs):
        text = json.dumps(spec, ensure_ascii=False)
        row = rows.get(spec["name"])
        if row is None:
            experiment.variants.append(Variant(position=position, name=spec["name"], kind=spec["kind"], spec_json=text))
            continue
        if row.spec_json != text:
            repo.delete_variant_generations(session, row.id)  # its outputs no longer match its definition
            row.spec_json, row.kind = text, spec["kind"]
        row.position = position


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
        old = json.loads(existing.spec_json)
        conflict = _conflict(old, spec.to_dict())
        if conflict is None:
            # Keep the stored vectors and variants (and their order), also those the file does not
            # list (added on the dashboard, say), and append the file's new ones.
            stored = stored_spec(existing)
            vectors = stored.vectors + tuple(v for v in spec.vectors if v.name not in old["vectors"])
            names = {x["name"] for x in old["variants"]}
            variants = stored.variants + tuple(v for v in spec.variants if v.name not in names)
            return save_spec(session, existing, _with(spec, vectors=vectors, variants=variants), vector_files)
        if not replace_existing:
            raise SteerLabError(
                f"{source}: experiment '{spec.name}' is already stored with a different {conflict}; "
                "rename the experiment (field name, or --name) or pass --replace to discard its stored results."
            )
        repo.delete_experiment(session, existing)
        session.flush()
    return save_spec(session, None, spec, vector_files)


def _with(spec: ExperimentSpec, **changes: Any) -> ExperimentSpec:
    return ExperimentSpec(**{**spec.__dict__, **changes})


def _conflict(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in _DEFINING:
        if old.get(key) != new.get(key):
            return key.replace("_", " ")
    # A stored vector or variant the new definition does not list is kept, not a conflict;
    # one it lists with another definition would make stored outputs stale.
    new_vectors = new.get("vectors", {})
    for name, value in old.get("vectors", {}).items():
        if name in new_vectors and new_vectors[name] != value:
            return f"definition of vector '{name}'"
    new_variants = {v["name"]: v for v in new.get("variants", [])}
    for variant in old.get("variants", []):
        if variant["name"] in new_variants and new_variants[variant["name"]] != variant:
            return f"definition of variant '{variant['name']}'"
    return None


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


def load_spec(store: Store, name: str) -> ExperimentSpec:
    with store.session() as session:
        return stored_spec(get_experiment(session, name))


def delete_experiment(store: Store, name: str, actor: str) -> None:
    """Delete the experiment with everything it owns; the caller has checked the actor may."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        counts = next(s for s in repo.experiment_summaries(session) if s.name == name)
        repo.delete_experiment(session, experiment)
        audit.record(session, actor, "deleted", name, f"with {counts.generations} outputs and {counts.ratings} votes")
