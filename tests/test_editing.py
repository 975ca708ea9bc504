"""The dashboard's editing services on a real store: what a form sends, what is stored."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from db.store import Store
from engine.errors import SteerLabError
from service.editing import create_experiment, save_variant, save_vector
from tests.conftest import TINYSTORIES, needs_models

pytestmark = needs_models


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "edit.db"
    create_experiment(Store(str(path)), {"name": "e", "model": TINYSTORIES, "prompts": ["Once upon a time"]})
    return path


def stored_vectors(db: Path) -> dict[str, dict[str, object]]:
    with sqlite3.connect(db) as conn:
        return {n: json.loads(s) for n, s in conn.execute("SELECT name, spec_json FROM vectors")}


def test_pairs_table_rows_empty_are_skipped_and_half_filled_are_refused(db: Path) -> None:
    store = Store(str(db))
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


def test_a_prompting_variant_needs_its_text_and_errors_use_the_forms_words(db: Path) -> None:
    store = Store(str(db))
    with pytest.raises(SteerLabError, match="system prompt or a prefix"):
        save_variant(store, "e", {"name": "polite", "kind": "prompting", "system": " ", "prefix": ""})
    save_vector(store, "e", "mood", {"pairs": [["He smiled.", "He frowned."]]})
    bad = {"name": "s", "kind": "steering", "interventions": [{"vector": "mood", "layers": [7], "coefficient": 1.0}]}
    with pytest.raises(SteerLabError) as info:
        save_variant(store, "e", bad)
    assert "edit 1" in str(info.value) and "interventions[0]" not in str(info.value)
