"""Steering vectors in the store: read a run's vector files, reuse stored vectors, extract the rest.

A stored vector is reused only if it was extracted for this model, from these pairs rendered
the same way (raw or through the chat template: :mod:`engine.contrast` fingerprints the exact
token sequences), by this method and reading; otherwise it is extracted again and stored
with that provenance (``model_id``, ``hidden_size``, ``method``, ``pairs_hash``,
``extraction_seconds``). The vector's definition itself lives in the experiment's
definition, not in its row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy.orm import Session

from db import repository as repo
from db.store import Store
from engine.contrast import vector_recipe
from engine.errors import SteerLabError
from engine.extract import extract_from_readings
from engine.models import LoadedModel
from engine.spec import ExperimentSpec, VectorSpec
from engine.vectors import SteeringVector, load_vector
from service.catalog import get_experiment

log = logging.getLogger(__name__)


def read_vector_files(spec: ExperimentSpec, model: LoadedModel, source: str) -> dict[str, bytes]:
    """The bytes of every vector the definition names by file, each checked against the model."""
    out = {}
    for vector in spec.vectors:
        if vector.file is not None:
            loaded = load_vector(vector.file, vector.name)
            loaded.check_fits(model.hidden_size, model.model_id, f"{source}: vector file '{vector.file}'")
            out[vector.name] = Path(vector.file).read_bytes()
    return out


def ensure_vectors(
    store: Store, name: str, spec: ExperimentSpec, model: LoadedModel, only: set[str] | None = None
) -> dict[str, SteeringVector]:
    """Every vector the variants use, extracted now if not stored for this model and pairs."""
    needed = only if only is not None else {n for v in spec.variants for n in v.vector_names()}
    out: dict[str, SteeringVector] = {}
    for vector_spec in spec.vectors:
        if vector_spec.name not in needed:
            continue
        with store.session() as session:
            experiment = get_experiment(session, name)
            row = next(v for v in experiment.vectors if v.name == vector_spec.name)
            stored = row.data
            in_use = stored is not None and _has_outputs(session, experiment.id, spec, vector_spec.name)
        vector = usable_vector(stored, vector_spec, model, name, spec.chat_template)
        if vector is None and in_use:
            vector = _kept_for_outputs(stored, vector_spec, model, name)
        if vector is None:
            vector = extract(model, vector_spec, spec.chat_template)
            with store.session() as session:
                row = next(v for v in get_experiment(session, name).vectors if v.name == vector_spec.name)
                repo.store_vector_data(
                    session,
                    row,
                    vector.to_bytes(),
                    model.model_id,
                    vector.hidden_size,
                    vector.method,
                    vector.pairs_hash,
                    vector.extraction_seconds,
                )
        out[vector_spec.name] = vector
    return out


def _has_outputs(session: Session, experiment_id: int, spec: ExperimentSpec, vector: str) -> bool:
    """Whether any stored output came from a variant that uses ``vector``."""
    positions = {i for i, v in enumerate(spec.variants) if vector in v.vector_names()}
    return any(position in positions for _, _, _, position in repo.generation_keys(session, experiment_id))


def _kept_for_outputs(
    data: bytes | None, spec: VectorSpec, model: LoadedModel, experiment: str
) -> SteeringVector | None:
    """A stored vector whose recipe an upgrade changed, kept because outputs were generated with it.

    Editing a vector's pairs drops its stored numbers and the outputs made with them
    (service.catalog), so a stored vector that no longer matches its recipe here was read by
    an earlier SteerLab (text pairs on a chat model were read as raw text before chat
    templating). Extracting it again would mix outputs of two different vectors in one
    experiment; it is kept (if it fits the model) and the way to a templated one is logged.
    """
    if data is None or spec.file is not None:
        return None
    vector = SteeringVector.from_bytes(data, source=f"stored vector '{spec.name}'", name=spec.name)
    fits = vector.model_id == model.model_id and vector.hidden_size == model.hidden_size
    if not (fits and vector.method == spec.method and vector.read == spec.read):
        return None
    log.warning(
        "Vector '%s' of experiment '%s' was extracted by an earlier SteerLab (read as %s text); it is kept because "
        "outputs were generated with it. Duplicate the experiment to extract it as this version reads it.",
        spec.name,
        experiment,
        vector.extra.get("template", "raw"),
    )
    return vector


def usable_vector(
    data: bytes | None, spec: VectorSpec, model: LoadedModel, experiment: str, chat_template: str = "auto"
) -> SteeringVector | None:
    """The stored vector if it still matches its definition, its rendering and the model; None if it must be extracted."""
    if data is None:
        if spec.file is not None:
            raise SteerLabError(
                f"Vector '{spec.name}' of experiment '{experiment}' has no stored data; import its file again."
            )
        return None
    vector = SteeringVector.from_bytes(data, source=f"stored vector '{spec.name}'", name=spec.name)
    if spec.file is not None:
        vector.check_fits(model.hidden_size, model.model_id, f"stored vector '{spec.name}'")
        return vector
    recipe = vector_recipe(model, spec, chat_template)
    fresh = (
        vector.model_id == model.model_id and vector.pairs_hash == recipe.pairs_hash and vector.method == spec.method
    )
    return vector if fresh and vector.read == spec.read else None


def extract(model: LoadedModel, spec: VectorSpec, chat_template: str = "auto") -> SteeringVector:
    """Extract the vector from its pairs (or personas), rendered as the experiment renders prompts."""
    started = time.perf_counter()
    recipe = vector_recipe(model, spec, chat_template)
    vector = extract_from_readings(
        model,
        spec.name,
        recipe.readings,
        method=spec.method,
        read=spec.read,
        pair_index=0,  # the recipe holds only the examples the method uses (single_pair: its one pair)
        pairs_hash=recipe.pairs_hash,
        extra={"template": "chat" if recipe.templated else "raw"},
    )
    # The extraction time includes rendering and tokenising the examples.
    return replace(vector, extraction_seconds=time.perf_counter() - started)
