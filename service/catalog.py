"""Experiments in the store: save a spec (creating or syncing rows), read it back, list, delete.

The experiment row keeps the whole definition as JSON, the one copy of it. Prompts, vectors
and variants also have rows (generations point at them), which hold identities and data
only: a vector row its extracted data, a variant row its name, position and kind.
:func:`save_spec` is the one place that keeps the rows in step with the definition: a
changed vector loses its extracted data, a variant whose outputs would now differ (its own
definition, a vector it uses, or a trained baseline's texts changed) loses its now-stale
generations, a removed one is deleted.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import Experiment, Variant, Vector
from db.store import Store
from engine.conversation import prompt_display
from engine.errors import SteerLabError
from engine.fields import Where
from engine.spec import ExperimentSpec, parse_experiment
from service import audit
from service.provenance import variant_hash

# Fields whose change makes every stored generation stale.
_DEFINING = ("model", "prompts", "generation", "chat_template", "probe_prompt")


def prompt_texts(spec: ExperimentSpec) -> list[str]:
    """What the prompt rows hold: a prompt's text, or a conversation's ``Role: content`` lines.

    Rows are for showing and joining; the messages themselves stay in the definition.
    """
    return [prompt_display(p) for p in spec.prompts]


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
    old: ExperimentSpec | None = None
    old_vectors: dict[str, Any] = {}
    existed = experiment is not None
    if experiment is None:
        experiment = repo.create_experiment(
            session, spec.name, spec.description, spec.model, data, spec.definition_hash(), prompt_texts(spec), {}, []
        )
    else:
        old, old_vectors = _parsed_or_none(experiment), json.loads(experiment.spec_json).get("vectors", {})
    if existed and [p.text for p in experiment.prompts] != prompt_texts(spec):
        raise SteerLabError(
            f"Experiment '{experiment.name}' cannot change its prompts; duplicate it to use other prompts."
        )
    experiment.name = spec.name
    experiment.model_id = spec.model
    replaced = _sync_vectors(experiment, old_vectors, data["vectors"], vector_files)
    _sync_variants(session, experiment, old, spec, replaced)
    repo.update_experiment_spec(session, experiment, data, spec.definition_hash())
    session.flush()
    return experiment


def _parsed_or_none(experiment: Experiment) -> ExperimentSpec | None:
    """The stored definition, or None if this SteerLab no longer accepts it (then every variant counts as changed)."""
    try:
        return stored_spec(experiment)
    except SteerLabError:
        return None


def _sync_vectors(
    experiment: Experiment, old: dict[str, Any], specs: dict[str, dict[str, Any]], files: dict[str, bytes]
) -> set[str]:
    """Bring the vector rows in line; returns the stored vectors whose file now holds other numbers."""
    replaced = set()
    rows = {v.name: v for v in experiment.vectors}
    for name, unwanted in rows.items():
        if name not in specs:
            experiment.vectors.remove(unwanted)
    for name, spec in specs.items():
        row = rows.get(name)
        if row is None:
            row = Vector(name=name)
            experiment.vectors.append(row)
        elif old.get(name) != spec:
            row.data = None  # re-extracted on the next run
        if name in files:
            if row.data is not None and row.data != files[name]:
                replaced.add(name)
            row.data = files[name]
    return replaced


def _sync_variants(
    session: Session, experiment: Experiment, old: ExperimentSpec | None, spec: ExperimentSpec, replaced: set[str]
) -> None:
    rows = {v.name: v for v in experiment.variants}
    wanted = {v.name for v in spec.variants}
    for name, unwanted in rows.items():
        if name not in wanted:
            experiment.variants.remove(unwanted)
    session.flush()
    before = {v.name: variant_hash(old, v) for v in old.variants} if old is not None else {}
    for position, variant in enumerate(spec.variants):
        row = rows.get(variant.name)
        if row is None:
            experiment.variants.append(Variant(position=position, name=variant.name, kind=variant.kind))
            continue
        uses_replaced = bool(replaced.intersection(variant.vector_names()))
        if uses_replaced or before.get(variant.name) != variant_hash(spec, variant):
            repo.delete_variant_generations(session, row.id)  # its outputs no longer match its definition
            row.kind = variant.kind
        row.position = position


def import_experiment(
    session: Session, spec: ExperimentSpec, source: str, vector_files: dict[str, bytes], replace_existing: bool = False
) -> Experiment:
    """Store a new experiment, or extend a stored one with new vectors and variants.

    A stored experiment with the same name is kept when the new definition only adds
    vectors or variants, changes scorers and descriptions, or adds or removes a variant's
    null arms (the variant's own outputs stay; an added arm is run next, a removed one goes
    with its outputs); any other change would make its stored outputs stale, so it needs
    ``replace_existing``.
    """
    existing = repo.find_experiment(session, spec.name)
    if existing is not None:
        old = json.loads(existing.spec_json)
        conflict = _conflict(old, spec.to_dict())
        if conflict is None:
            return save_spec(session, existing, _extended(existing, old, spec, source), vector_files)
        if not replace_existing:
            raise SteerLabError(
                f"{source}: experiment '{spec.name}' is already stored with a different {conflict}; "
                "rename the experiment (field name, or --name) or pass --replace to discard its stored results."
            )
        repo.delete_experiment(session, existing)
        session.flush()
    return save_spec(session, None, spec, vector_files)


def _extended(existing: Experiment, old: dict[str, Any], spec: ExperimentSpec, source: str) -> ExperimentSpec:
    """``spec`` over the stored experiment: its vectors and variants kept, the file's new ones appended.

    The stored ones stay in their order, also those the file does not list (added on the
    dashboard, say). A stored variant the file lists takes the file's null arms: the file says
    which controls run beside it (the spec derives the arm variants anew from them).
    """
    stored = stored_spec(existing)
    vectors = stored.vectors + tuple(v for v in spec.vectors if v.name not in old["vectors"])
    arms = {v.name: v.null_arms for v in spec.variants if not v.control_of}
    kept = tuple(replace(v, null_arms=arms.get(v.name, v.null_arms)) for v in stored.variants if not v.control_of)
    names = {x["name"] for x in old["variants"]}
    added = tuple(v for v in spec.variants if not v.control_of and v.name not in names)
    # Raters an analyst left out on the dashboard stay left out when the file names none: a re-run
    # of the file must not silently count them again.
    statistics = spec.statistics
    if not statistics.exclude_raters and stored.statistics.exclude_raters:
        statistics = replace(statistics, exclude_raters=stored.statistics.exclude_raters)
    try:
        return _with(spec, vectors=vectors, variants=kept + added, statistics=statistics)
    except SteerLabError as exc:  # a declared variant named like another's null arm
        raise SteerLabError(f"{source}: {exc}") from exc


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
    # Null arms are controls run beside a variant, not part of what decides its outputs:
    # adding or removing them extends the stored experiment (see _extended).
    new_variants = {v["name"]: _without_null_arms(v) for v in new.get("variants", [])}
    for variant in old.get("variants", []):
        if variant["name"] in new_variants and new_variants[variant["name"]] != _without_null_arms(variant):
            return f"definition of variant '{variant['name']}'"
    return None


def _without_null_arms(variant: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in variant.items() if key != "null_arms"}


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
