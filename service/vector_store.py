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
from engine.spec import DEFAULT_NEUTRAL_PROMPTS, ExperimentSpec, VectorSpec
from engine.vector_formats import load_any_vector, small_coefficient_warnings
from engine.vectors import MEAN_DIFFERENCE, UNIT_NORM, SteeringVector
from service.catalog import get_experiment

log = logging.getLogger(__name__)


def read_vector_files(spec: ExperimentSpec, model: LoadedModel, source: str) -> dict[str, bytes]:
    """The bytes of every vector the definition names by file, each checked against the model."""
    files = load_vector_files(spec)
    check_vector_files(spec, files, model, source)
    return files


def load_vector_files(spec: ExperimentSpec) -> dict[str, bytes]:
    """The bytes to store of every vector the definition names by file; needs no model.

    A SteerLab file is stored as it is; a llama.cpp / repeng control vector, a steering-vectors
    tensor dict or a safetensors file of one tensor per layer is stored converted to SteerLab's
    format (engine.vector_formats), its norm convention and origin in its metadata. Read
    where the files are (a cluster run's driver), checked where the model is.
    """
    out = {}
    for vector in spec.vectors:
        if vector.file is not None:
            loaded = load_any_vector(vector.file, vector.name)
            foreign = loaded.extra.get("source_format", "") not in ("", "steerlab-export")
            out[vector.name] = loaded.to_bytes() if foreign else Path(vector.file).read_bytes()
    return out


def check_vector_files(spec: ExperimentSpec, files: dict[str, bytes], model: LoadedModel, source: str) -> None:
    """Refuse a vector file made for another model (hidden size, layers) in one sentence."""
    for vector in spec.vectors:
        if vector.file is None or vector.name not in files:
            continue
        where = f"{source}: vector file '{vector.file}'"
        loaded = SteeringVector.from_bytes(files[vector.name], where, vector.name)
        loaded.check_fits(model.hidden_size, model.model_id, where)
        beyond = [layer for layer in loaded.layers if layer >= model.n_layers]
        if beyond:
            raise SteerLabError(
                f"{where} has a direction for layer {beyond[0]}, but model '{model.model_id}' has layers 0 to "
                f"{model.n_layers - 1}; use the vector with the model it was made for."
            )


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
    warn_small_coefficients(name, spec, model, out)
    return out


def warn_small_coefficients(
    name: str, spec: ExperimentSpec, model: LoadedModel, vectors: dict[str, SteeringVector]
) -> list[str]:
    """Log (and return) one sentence per variant that adds a unit-norm vector too weakly to matter.

    Unit-norm vectors (repeng's) need coefficients of the order of the hidden states' norm,
    mean differences (SteerLab's) about 1: the typical norm is read from the neutral prompts
    in one short forward pass, only when a unit-norm vector is in use.
    """
    if not any(v.norm_convention == UNIT_NORM for v in vectors.values()):
        return []
    from engine.extract import read_activations  # here: only when a unit-norm vector is used

    texts = spec.neutral_prompts or DEFAULT_NEUTRAL_PROMPTS
    token_lists = [list(model.tokenizer(text).input_ids) for text in texts]
    readings = read_activations(model, [t for t in token_lists if t], "last")  # [texts, layers, hidden]
    norms = readings.norm(dim=-1).median(dim=0).values.tolist()
    warnings = small_coefficient_warnings(name, spec.variants, vectors, dict(enumerate(norms)))
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


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
        # Extraction gives activation units (mean difference, its PCA or one pair's difference): recorded, so an
        # exported or shared file tells its reader which coefficients fit it.
        extra={"template": "chat" if recipe.templated else "raw", "norm_convention": MEAN_DIFFERENCE},
    )
    # The extraction time includes rendering and tokenising the examples.
    return replace(vector, extraction_seconds=time.perf_counter() - started)
