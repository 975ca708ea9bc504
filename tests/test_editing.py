"""The dashboard's editing services on a real store (SQLite and PostgreSQL): what a form sends, what is stored."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from sqlalchemy import text

from db import repository as repo
from db.schema import Generation
from db.store import Store
from engine.errors import SteerLabError
from service.editing import create_experiment, save_variant, save_vector, upload_vector
from tests.conftest import TINYSTORIES, needs_models
from tests.helpers import random_vector

pytestmark = [needs_models, pytest.mark.both_stores]


@pytest.fixture
def db(store: Store) -> Store:
    create_experiment(store, {"name": "e", "model": TINYSTORIES, "prompts": ["Once upon a time"]})
    return store


def stored_vectors(store: Store) -> dict[str, dict[str, object]]:
    with store.engine.connect() as conn:
        # The definitions live in the experiment's spec_json only (vector rows hold extracted data).
        spec_json = conn.execute(text("SELECT spec_json FROM experiments")).scalar_one()
        vectors: dict[str, dict[str, object]] = json.loads(spec_json)["vectors"]
        assert {n for (n,) in conn.execute(text("SELECT name FROM vectors"))} == set(vectors), "one row per vector"
        return vectors


def test_pairs_table_rows_empty_are_skipped_and_half_filled_are_refused(db: Store) -> None:
    store = db
    nan = math.nan
    rows = [["He smiled.", "He frowned."], [None, None], [nan, ""], ["She laughed.", "She cried."]]
    save_vector(store, "e", "mood", {"method": "mean_diff", "read": "last", "pairs": rows})
    assert stored_vectors(db)["mood"]["pairs"] == [["He smiled.", "He frowned."], ["She laughed.", "She cried."]]
    for half, message in (
        ([["A hug.", nan]], "row 1: the negative text is empty"),
        ([["x", "y"], [None, None], [None, "A frown."]], "row 3: the positive text is empty"),
        ([[None, None]], "has no filled pair"),
    ):
        with pytest.raises(SteerLabError, match=message):
            save_vector(store, "e", "half", {"method": "mean_diff", "read": "last", "pairs": half})
    assert "half" not in stored_vectors(db), "nothing is saved"
    assert "nan" not in json.dumps(stored_vectors(db))


def test_a_prompting_variant_needs_its_text_and_errors_use_the_forms_words(db: Store) -> None:
    store = db
    with pytest.raises(SteerLabError, match="system prompt or a prefix"):
        save_variant(store, "e", {"name": "polite", "kind": "prompting", "system": " ", "prefix": ""})
    save_vector(store, "e", "mood", {"pairs": [["He smiled.", "He frowned."]]})
    bad = {"name": "s", "kind": "steering", "interventions": [{"vector": "mood", "layers": [7], "coefficient": 1.0}]}
    with pytest.raises(SteerLabError) as info:
        save_variant(store, "e", bad)
    assert "edit 1" in str(info.value) and "interventions[0]" not in str(info.value)


def variants_with_outputs(store: Store) -> set[str]:
    with store.session() as session:
        experiment = repo.find_experiment(session, "e")
        assert experiment is not None
        return {g.variant.name for g in repo.generations_of(session, experiment.id)}


def give_every_variant_an_output(store: Store) -> None:
    with store.session() as session:
        experiment = repo.find_experiment(session, "e")
        assert experiment is not None
        have = variants_with_outputs(store)
        prompt = experiment.prompts[0]
        session.add_all(
            Generation(
                experiment_id=experiment.id,
                variant_id=v.id,
                prompt_id=prompt.id,
                sample_index=0,
                text="t",
                token_count=1,
                seconds=0.1,
                peak_memory_bytes=1,
            )
            for v in experiment.variants
            if v.name not in have
        )


def test_a_variant_keeps_its_outputs_until_what_decides_them_changes(db: Store, tiny: Any) -> None:
    store = db
    first, second = (random_vector(tiny, seed=seed, scale=0.01).to_bytes() for seed in (0, 1))
    upload_vector(store, "e", "mine", first, "mine.safetensors")
    steered: dict[str, Any] = {
        "name": "steered",
        "interventions": [{"method": "add", "vector": "mine", "layers": [0], "coefficient": 1}],
    }
    save_variant(store, "e", steered)
    give_every_variant_an_output(store)
    everything = variants_with_outputs(store)
    assert "steered" in everything and len(everything) >= 2
    # A description, or the same file uploaded again, does not change the outputs.
    save_variant(store, "e", {**steered, "description": "a note"}, original_name="steered")
    upload_vector(store, "e", "mine", first, "mine.safetensors")
    assert variants_with_outputs(store) == everything
    # Other numbers under the same vector name: the variant that adds it loses its outputs.
    upload_vector(store, "e", "mine", second, "mine.safetensors")
    assert variants_with_outputs(store) == everything - {"steered"}
    give_every_variant_an_output(store)
    save_variant(
        store, "e", {**steered, "interventions": [{**steered["interventions"][0], "coefficient": 2}]}, "steered"
    )
    assert variants_with_outputs(store) == everything - {"steered"}


@needs_models
def test_an_uploaded_file_can_be_stored_under_another_name_and_its_uploader_owns_it(store: Store) -> None:
    from service.access import Identity, role_in
    from service.catalog import list_experiments
    from service.editing import create_experiment_from_yaml
    from tests.conftest import MOOD_FILE

    definition = MOOD_FILE.read_text()
    ann = Identity("ann@example.com", signed_in=True)
    assert create_experiment_from_yaml(store, definition, "mood.yaml", ann).name == "tinystories_mood"
    with pytest.raises(SteerLabError, match=r"already exists; pick another name .*'Store as'"):
        create_experiment_from_yaml(store, definition, "mood.yaml", ann)
    with pytest.raises(SteerLabError, match=r"'Store as'.*101 characters long"):
        create_experiment_from_yaml(store, definition, "mood.yaml", ann, "x" * 101)
    assert create_experiment_from_yaml(store, definition, "mood.yaml", ann, " mood_again ").name == "mood_again"
    assert role_in(store, ann, "mood_again") == "owner", "the signed-in uploader owns it, not the local user"
    assert sorted(e.name for e in list_experiments(store)) == ["mood_again", "tinystories_mood"]
