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
from engine import limits
from engine.conversation import PromptItem
from engine.errors import SteerLabError
from engine.experiment_file import parse_experiment_text
from engine.fields import Where, as_name, printable, short
from engine.methods import registry
from engine.methods.base import FieldInfo, ModelFacts, SteeringMethod
from engine.model_config import config_facts
from engine.models import load_model
from engine.null_arms import ARMS
from engine.prompt_files import PROMPT_FILE_TYPES, parse_prompts
from engine.spec import (
    ExperimentSpec,
    VariantSpec,
    check_against_model,
    check_variant_against_model,
    parse_experiment,
    parse_variant,
)
from engine.vector_formats import is_other_tool_file, vector_from_upload
from engine.vectors import SteeringVector
from service import audit, catalog
from service.access import LOCAL, Identity, make_owner, require
from service.catalog import get_experiment, save_spec, stored_spec
from service.edit_scale import check_edit_scales


def uploaded(filename: str) -> str:
    """How messages name an upload: its name as the browser sent it, printable and short."""
    return f"Uploaded file '{short(printable(filename), 80)}'"


def parse_uploaded_prompts(content: bytes, filename: str) -> list[PromptItem]:
    """Prompts from an uploaded CSV, JSONL or TXT file (errors name the line)."""
    suffix = Path(filename).suffix.lower()
    if suffix not in PROMPT_FILE_TYPES:
        raise SteerLabError(
            f"{uploaded(filename)} has type '{short(printable(suffix), 20)}'; use one of {', '.join(PROMPT_FILE_TYPES)}."
        )
    limits.check(limits.MAX_FILE_BYTES, len(content), uploaded(filename))
    return parse_prompts(content.decode("utf-8", "replace"), suffix, uploaded(filename))


def model_facts(model_id: str, device: str = "auto") -> ModelFacts:
    """Layer count and hidden size: from the model's config (no weights), else by loading it once per process."""
    return config_facts(model_id) or ModelFacts.of(load_model(model_id, device))


def steering_methods() -> dict[str, type[SteeringMethod]]:
    return registry()


# FieldInfo: what the dashboard builds method forms from; VariantSpec: what its variant forms show.
__all__ = ["FieldInfo", "VariantSpec", "steering_methods"]


# The new-experiment form's labels for fields whose names differ from them.
NEW_EXPERIMENT_LABELS = {
    "max_new_tokens": "Max new tokens",
    "samples_per_prompt": "Samples per prompt",
    "do_sample": "Sample",
    "top_k": "Top-k",
    "top_p": "Top-p",
    "model": "Model",
    "name": "Name",
}

# The variant form's labels for fields whose names differ from them.
VARIANT_LABELS = {"null_arms": "Null arms"}
# The choices of the variant form's "Null arms" field (engine.null_arms): "random", "flipped".
NULL_ARMS: tuple[str, ...] = ARMS


def create_experiment(
    store: Store, raw: dict[str, Any], source: str = "the new experiment form", who: Identity = LOCAL
) -> ExperimentSpec:
    """From plain data (a form). Adds a baseline variant when none is given."""
    data = dict(raw)
    data.setdefault("variants", [{"name": "baseline"}])
    spec = parse_experiment(data, Where.form(source, NEW_EXPERIMENT_LABELS))
    return _store_new(store, spec, source, who)


def create_experiment_from_yaml(
    store: Store, text: str, filename: str, who: Identity = LOCAL, name: str = ""
) -> ExperimentSpec:
    """An uploaded experiment file: it comes without a folder, so it may not name other files.

    ``name`` (when not blank) stores it under another name than the file's, so a team can
    upload the same file twice, e.g. to run it again beside the first copy.
    """
    spec = parse_experiment_text(text, uploaded(filename), None)
    if name.strip():
        spec = replace(spec, name=as_name(name, Where.form("the upload form", {"name": "Store as"}).child("name")))
    return _store_new(store, spec, short(printable(filename), 80), who)


def create_experiment_from_file(store: Store, path: Path, who: Identity = LOCAL) -> ExperimentSpec:
    """An experiment file on the server (an example shipped with SteerLab), read as the command line reads it."""
    from engine.experiment_file import load_experiment_file

    return _store_new(store, load_experiment_file(path), path.name, who)


def _store_new(store: Store, spec: ExperimentSpec, source: str, who: Identity) -> ExperimentSpec:
    check_against_model(spec, model_facts(spec.model), source)
    with store.session() as session:
        if repo.find_experiment(session, spec.name) is not None:
            raise SteerLabError(
                f"{source}: an experiment named '{spec.name}' already exists; pick another name "
                "(on the dashboard: type one under 'Store as')."
            )
        experiment = save_spec(session, None, spec)
        make_owner(session, experiment, who)
        audit.record(session, who.user, "created", spec.name, f"from {source}")
    return spec


def duplicate_experiment(store: Store, name: str, new_name: str, who: Identity = LOCAL) -> str:
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
        make_owner(session, copy, who)
        audit.record(session, who.user, "created", new_name, f"as a copy of '{name}'")
        for target in copy.vectors:
            original = next(v for v in source.vectors if v.name == target.name)
            target.model_id, target.hidden_size, target.method = (
                original.model_id,
                original.hidden_size,
                original.method,
            )
            target.pairs_hash, target.extraction_seconds = original.pairs_hash, original.extraction_seconds
    return new_name


def save_variant(
    store: Store, experiment_name: str, raw: dict[str, Any], original_name: str | None = None, who: Identity = LOCAL
) -> VariantSpec:
    """Add a variant, or replace ``original_name`` (its stored outputs are dropped if it changed).

    ``raw["null_arms"]`` is the variant's whole list of null arms: an arm it no longer lists
    is removed with its outputs, and one it adds is run next time (the variant's own outputs
    stay when only its arms change). A null arm itself is derived, so it is refused here.
    """
    require(store, who, experiment_name, "owner", "changing variants")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        if original_name is not None:
            refuse_null_arm(spec, original_name)
        where = Where.form(f"Variant '{raw.get('name') or original_name or 'new'}'", VARIANT_LABELS)
        variant = parse_variant(raw, where, {v.name for v in spec.vectors})
        arm = _null_arm(spec, variant.name)
        if arm is not None and variant.name != original_name:
            raise SteerLabError(
                f"A variant named '{variant.name}' already exists: it is a null arm of '{arm.control_of}'; "
                "pick another name."
            )
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
        # The spec derives the variant's null arms anew from its null_arms (engine.null_arms).
        new_spec = replace(spec, variants=tuple(variants))
        check_variant_against_model(new_spec, variant, model_facts(spec.model), where)
        check_edit_scales(store, experiment_name, variant)
        save_spec(session, experiment, new_spec)
        action = f"variant '{variant.name}' " + (f"changed (was '{original_name}')" if original_name else "added")
        audit.record(session, who.user, "changed", experiment_name, action + _arms_note(variant))
        return variant


def delete_variant(store: Store, experiment_name: str, variant_name: str, who: Identity = LOCAL) -> None:
    """Delete a declared variant with its outputs and votes, and its null arms with theirs."""
    require(store, who, experiment_name, "owner", "deleting variants")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        refuse_null_arm(spec, variant_name)
        remaining = tuple(v for v in spec.variants if v.name != variant_name)
        if len(remaining) == len(spec.variants):
            raise SteerLabError(f"Variant '{variant_name}' does not exist; reload the page.")
        if not any(not v.control_of for v in remaining):
            raise SteerLabError("An experiment needs at least one variant; add another before deleting this one.")
        deleted = next(v for v in spec.variants if v.name == variant_name)
        save_spec(session, experiment, replace(spec, variants=remaining))
        audit.record(
            session, who.user, "changed", experiment_name, f"variant '{variant_name}' deleted" + _arms_note(deleted)
        )


def refuse_null_arm(spec: ExperimentSpec, name: str) -> None:
    """One sentence if ``name`` is a null arm: it is derived from its variant, so it changes only through it."""
    arm = _null_arm(spec, name)
    if arm is not None:
        raise SteerLabError(
            f"'{arm.name}' is a null arm of '{arm.control_of}'; change {arm.control_of}'s null arms instead."
        )


def _null_arm(spec: ExperimentSpec, name: str) -> VariantSpec | None:
    return next((v for v in spec.variants if v.control_of and v.name == name), None)


def _arms_note(variant: VariantSpec) -> str:
    """What the audit log adds about a variant's null arms (they come and go with it)."""
    return f" with null arms {', '.join(variant.null_arms)}" if variant.null_arms else ""


def save_vector(store: Store, experiment_name: str, name: str, raw: dict[str, Any], who: Identity = LOCAL) -> None:
    """Add or change a vector defined by contrastive pairs (it is re-extracted on the next run).

    ``raw["pairs"]`` are the rows of the form's table as they come: empty rows are skipped,
    a row with only one text is an error naming the row, and nothing is saved then.
    """
    if not name.strip():
        raise SteerLabError("The vector name is empty; type a name.")
    raw = {**raw, "pairs": _form_pairs(name.strip(), raw.get("pairs") or [])}
    require(store, who, experiment_name, "owner", "changing vectors")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        data = stored_spec(experiment).to_dict()
        data["vectors"][name.strip()] = raw
        spec = parse_experiment(data, Where.form(f"Vector '{name.strip()}'"))
        save_spec(session, experiment, spec)
        audit.record(session, who.user, "changed", experiment_name, f"vector '{name.strip()}' saved from pairs")


def _form_pairs(name: str, rows: list[Any]) -> list[list[str]]:
    """The filled rows of a pairs table; a half-filled row raises, naming its row and column."""
    pairs: list[list[str]] = []
    for number, row in enumerate(rows, start=1):
        positive, negative = (_cell(x) for x in [*list(row), None, None][:2])
        if not positive.strip() and not negative.strip():
            continue
        if not positive.strip() or not negative.strip():
            empty = "negative" if positive.strip() else "positive"
            raise SteerLabError(
                f"Vector '{name}', row {number}: the {empty} text is empty; fill in both texts or delete the row."
            )
        pairs.append([positive, negative])
    if not pairs:
        raise SteerLabError(f"Vector '{name}' has no filled pair; write at least one positive and negative text.")
    return pairs


def _cell(value: Any) -> str:
    # An empty cell of the dashboard's table arrives as None or NaN, never as "nan" text.
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def upload_vector(
    store: Store, experiment_name: str, name: str, content: bytes, filename: str, who: Identity = LOCAL
) -> SteeringVector:
    """Add a vector from a file (SteerLab or per-layer safetensors, a llama.cpp/repeng control-vector
    GGUF, a steering-vectors layer dict); its hidden size must match the model. What is stored is
    SteerLab's own safetensors of what was read, norm convention included."""
    require(store, who, experiment_name, "owner", "adding vectors")
    vector = vector_from_upload(content, filename, name)
    if is_other_tool_file(content):
        # Another tool's file is stored as SteerLab's own; a safetensors upload keeps its bytes, so the
        # same file uploaded again is recognised as unchanged (safetensors' metadata order is not stable).
        content = vector.to_bytes()
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        vector.check_fits(model_facts(spec.model).hidden_size, spec.model, uploaded(filename))
        data = spec.to_dict()
        # The upload's name is only a label here (the bytes are stored): keep it printable.
        data["vectors"][name.strip()] = {"file": short(printable(filename), 80)}
        new_spec = parse_experiment(data, Where.form(f"Vector '{name}'"))
        save_spec(session, experiment, new_spec, {name.strip(): content})
        audit.record(
            session,
            who.user,
            "changed",
            experiment_name,
            f"vector '{name.strip()}' uploaded from {short(printable(filename), 80)}",
        )
    return vector


def delete_vector(store: Store, experiment_name: str, name: str, who: Identity = LOCAL) -> None:
    require(store, who, experiment_name, "owner", "deleting vectors")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        users = [v.name for v in spec.variants if name in v.vector_names()]
        if users:
            raise SteerLabError(
                f"Vector '{name}' is used by variant(s) {', '.join(users)}; change or delete them first."
            )
        save_spec(session, experiment, replace(spec, vectors=tuple(v for v in spec.vectors if v.name != name)))
        audit.record(session, who.user, "changed", experiment_name, f"vector '{name}' deleted")


def delete_experiment(store: Store, name: str, who: Identity = LOCAL) -> None:
    """Delete an experiment with all its outputs and votes (owners only)."""
    require(store, who, name, "owner", "deleting the experiment")
    catalog.delete_experiment(store, name, who.user)
