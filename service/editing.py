"""Create, duplicate and edit experiments, variants and vectors (the dashboard's forms).

Every function validates the whole change first and saves it in one transaction, so a
rejected form leaves the store exactly as it was.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from engine.experiment_file import parse_experiment_text
from engine.fields import Where
from engine.methods import registry
from engine.methods.base import FieldInfo, ModelFacts, SteeringMethod
from engine.models import load_model
from engine.prompt_files import PROMPT_FILE_TYPES, parse_prompts
from engine.spec import ExperimentSpec, VariantSpec, check_against_model, parse_experiment, parse_variant
from engine.vectors import SteeringVector
from service.catalog import get_experiment, save_spec, stored_spec


def parse_uploaded_prompts(content: bytes, filename: str) -> list[str]:
    """Prompts from an uploaded CSV, JSONL or TXT file (errors name the line)."""
    suffix = Path(filename).suffix.lower()
    if suffix not in PROMPT_FILE_TYPES:
        raise SteerLabError(
            f"Uploaded file '{filename}' has type '{suffix}'; use one of {', '.join(PROMPT_FILE_TYPES)}."
        )
    return parse_prompts(content.decode("utf-8", "replace"), suffix, f"Uploaded file '{filename}'")


def model_facts(model_id: str, device: str = "auto") -> ModelFacts:
    """Layer count and hidden size (loads the model once per process)."""
    return ModelFacts.of(load_model(model_id, device))


def steering_methods() -> dict[str, type[SteeringMethod]]:
    return registry()


__all__ = ["FieldInfo", "steering_methods"]  # FieldInfo: what the dashboard builds method forms from


def create_experiment(store: Store, raw: dict[str, Any], source: str = "the new experiment form") -> ExperimentSpec:
    """From plain data (a form). Adds a baseline variant when none is given."""
    data = dict(raw)
    data.setdefault("variants", [{"name": "baseline"}])
    spec = parse_experiment(data, Where(source))
    return _store_new(store, spec, source)


def create_experiment_from_yaml(store: Store, text: str, filename: str) -> ExperimentSpec:
    spec = parse_experiment_text(text, filename, Path.cwd())
    if any(v.file for v in spec.vectors):
        raise SteerLabError(
            f"{filename} names vector files, which an upload cannot carry; run it with `python -m engine run` instead."
        )
    return _store_new(store, spec, filename)


def _store_new(store: Store, spec: ExperimentSpec, source: str) -> ExperimentSpec:
    check_against_model(spec, model_facts(spec.model), source)
    with store.session() as session:
        if repo.find_experiment(session, spec.name) is not None:
            raise SteerLabError(f"{source}: an experiment named '{spec.name}' already exists; pick another name.")
        save_spec(session, None, spec)
    return spec


def duplicate_experiment(store: Store, name: str, new_name: str) -> None:
    """Copy the definition and extracted vectors (not outputs or votes) under a new name."""
    new_name = new_name.strip()
    if not new_name:
        raise SteerLabError("The new name is empty; type a name for the copy.")
    with store.session() as session:
        if repo.find_experiment(session, new_name) is not None:
            raise SteerLabError(f"An experiment named '{new_name}' already exists; pick another name for the copy.")
        source = get_experiment(session, name)
        spec = replace(stored_spec(source), name=new_name)
        vector_data = {v.name: v.data for v in source.vectors if v.data is not None}
        copy = save_spec(session, None, spec, vector_data)
        for target in copy.vectors:
            original = next(v for v in source.vectors if v.name == target.name)
            target.model_id, target.hidden_size, target.method = (
                original.model_id,
                original.hidden_size,
                original.method,
            )
            target.pairs_hash, target.extraction_seconds = original.pairs_hash, original.extraction_seconds


def save_variant(
    store: Store, experiment_name: str, raw: dict[str, Any], original_name: str | None = None
) -> VariantSpec:
    """Add a variant, or replace ``original_name`` (its stored outputs are dropped if it changed)."""
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        where = Where(f"variant '{raw.get('name') or original_name or 'new'}'")
        variant = parse_variant(raw, where, {v.name for v in spec.vectors})
        others = [v for v in spec.variants if v.name != (original_name or variant.name)]
        if original_name is None and len(others) != len(spec.variants):
            raise SteerLabError(f"A variant named '{variant.name}' already exists; pick another name or edit that one.")
        if any(v.name == variant.name for v in others):
            raise SteerLabError(f"A variant named '{variant.name}' already exists; pick another name.")
        if original_name is not None and original_name not in {v.name for v in spec.variants}:
            raise SteerLabError(f"Variant '{original_name}' no longer exists; reload the page.")
        variants = (
            [variant if v.name == original_name else v for v in spec.variants]
            if original_name
            else [*spec.variants, variant]
        )
        new_spec = replace(spec, variants=tuple(variants))
        check_against_model(new_spec, model_facts(spec.model), where.source)
        save_spec(session, experiment, new_spec)
        return variant


def delete_variant(store: Store, experiment_name: str, variant_name: str) -> None:
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        remaining = tuple(v for v in spec.variants if v.name != variant_name)
        if len(remaining) == len(spec.variants):
            raise SteerLabError(f"Variant '{variant_name}' does not exist; reload the page.")
        if not remaining:
            raise SteerLabError("An experiment needs at least one variant; add another before deleting this one.")
        save_spec(session, experiment, replace(spec, variants=remaining))


def save_vector(store: Store, experiment_name: str, name: str, raw: dict[str, Any]) -> None:
    """Add or change a vector defined by contrastive pairs (it is re-extracted on the next run)."""
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        data = stored_spec(experiment).to_dict()
        data["vectors"][name.strip()] = raw
        spec = parse_experiment(data, Where(f"vector '{name}'"))
        if not name.strip():
            raise SteerLabError("The vector name is empty; type a name.")
        save_spec(session, experiment, spec)


def upload_vector(store: Store, experiment_name: str, name: str, content: bytes, filename: str) -> SteeringVector:
    """Add a vector from a safetensors file; its hidden size must match the model."""
    vector = SteeringVector.from_bytes(content, source=f"Uploaded file '{filename}'", name=name)
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        vector.check_fits(model_facts(spec.model).hidden_size, spec.model, f"Uploaded file '{filename}'")
        data = spec.to_dict()
        data["vectors"][name.strip()] = {"file": filename}
        new_spec = parse_experiment(data, Where(f"vector '{name}'"))
        save_spec(session, experiment, new_spec, {name.strip(): content})
    return vector


def delete_vector(store: Store, experiment_name: str, name: str) -> None:
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        users = [v.name for v in spec.variants if name in v.vector_names()]
        if users:
            raise SteerLabError(
                f"Vector '{name}' is used by variant(s) {', '.join(users)}; change or delete them first."
            )
        save_spec(session, experiment, replace(spec, vectors=tuple(v for v in spec.vectors if v.name != name)))
