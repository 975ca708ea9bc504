"""Null arms wherever variants are edited: the variant form, the editing services, and re-running a file.

A null arm ("sad (random)") is derived from its variant's ``null_arms``: it is changed or
removed only through that variant, and changing only a variant's null arms keeps its own
stored outputs (and votes), adds the new arms' outputs and deletes only the removed arms'.
Everything runs TinyStories into a real store, on SQLite and on PostgreSQL (the voted template
store is made once per backend and copied for each test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where
from engine.spec import parse_experiment
from service.catalog import get_experiment, load_spec, save_spec
from service.cli import main
from service.editing import delete_variant, save_variant
from service.running import RunOptions, run_spec
from tests.conftest import TINYSTORIES, needs_models
from tests.postgres import copy_store_url, new_store_url
from tests.test_dashboard import open_page
from tests.test_extract import PAIRS

pytestmark = [needs_models, pytest.mark.both_stores]

SAD = {"method": "add", "vector": "sad", "layers": [1], "coefficient": 2.0}
ARMS = ["sad (random)", "sad (flipped)"]


def experiment(**sad: Any) -> dict[str, Any]:
    """Two prompts, a baseline and 'sad' (with ``sad``'s extra fields, e.g. null_arms): small and fast."""
    return {
        "name": "e",
        "model": TINYSTORIES,
        "prompts": ["Once upon a time, there was a little bird who ", "Tim dropped his ice cream. He "],
        "generation": {"max_new_tokens": 8, "samples_per_prompt": 1, "seed": 3},
        "vectors": {"sad": {"pairs": [list(p) for p in PAIRS]}},
        "variants": [{"name": "baseline"}, {"name": "sad", "interventions": [dict(SAD)], **sad}],
        "scorers": [{"name": "sad_words", "kind": "words", "words": ["sad", "cried", "tears"]}],
    }


Outputs = dict[tuple[str, int], tuple[int, str]]


def outputs(store: Store) -> Outputs:
    """(variant, prompt position) -> (generation id, text): an output kept is the same row, not a new one."""
    with store.session() as session:
        rows = repo.generation_rows(session, get_experiment(session, "e").id)
        return {(g.variant, g.prompt_index): (g.id, g.text) for g in rows}


def votes(store: Store) -> list[tuple[str, str, str]]:
    with store.session() as session:
        rows = repo.rating_rows(session, get_experiment(session, "e").id)
        return sorted((r.left_variant, r.right_variant, r.choice) for r in rows)


def stored_json(store: Store) -> str:
    with store.session() as session:
        return get_experiment(session, "e").spec_json


def without(found: Outputs, *variants: str) -> Outputs:
    return {key: value for key, value in found.items() if key[0] not in variants}


def template(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """The experiment with both null arms on 'sad', run once (8 outputs) and voted on; the store's URL."""
    store = Store(new_store_url(backend, folder, request))
    spec = parse_experiment(experiment(null_arms=True), Where("arms.yaml"))
    assert run_spec(store, spec, "arms.yaml", RunOptions(batch_size=8, device="cpu")).status == "done"
    ids = {key: gid for key, (gid, _) in outputs(store).items()}
    with store.session() as session:
        repo.add_ratings(
            session,
            get_experiment(session, "e").id,
            [
                repo.NewRating("ann", ids[("sad", 0)], ids[("baseline", 0)], "left"),
                repo.NewRating("ann", ids[("sad", 0)], ids[("sad (random)", 0)], "left"),
                repo.NewRating("ann", ids[("sad (flipped)", 1)], ids[("sad", 1)], "right"),
            ],
        )
    store.close()
    return store.url


@pytest.fixture(scope="module")
def template_sqlite(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return template("sqlite", tmp_path_factory.mktemp("arms"), request)


@pytest.fixture(scope="module")
def template_postgresql(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return template("postgresql", tmp_path_factory.mktemp("arms"), request)


@pytest.fixture
def store(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A copy of the template store, for one test to change."""
    copy = Store(copy_store_url(request.getfixturevalue(f"template_{store_backend}"), tmp_path, request))
    yield copy
    copy.close()


@pytest.fixture
def empty(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A new empty store on the test's backend."""
    fresh = Store(new_store_url(store_backend, tmp_path, request))
    yield fresh
    fresh.close()


# --- the editing services ----------------------------------------------------------------


def test_a_null_arm_cannot_be_changed_renamed_or_deleted_on_its_own(store: Store) -> None:
    before, before_votes, before_json = outputs(store), votes(store), stored_json(store)
    assert {v for v, _ in before} == {"baseline", "sad", *ARMS} and len(before) == 8
    refusal = r"^'sad \(random\)' is a null arm of 'sad'; change sad's null arms instead\.$"
    arm_form = {"name": "sad (random)", "interventions": [dict(SAD)]}
    with pytest.raises(SteerLabError, match=refusal):
        save_variant(store, "e", arm_form, original_name="sad (random)")
    with pytest.raises(SteerLabError, match=refusal):
        save_variant(store, "e", {**arm_form, "name": "renamed"}, original_name="sad (random)")
    with pytest.raises(SteerLabError, match=refusal):
        delete_variant(store, "e", "sad (random)")
    with pytest.raises(SteerLabError, match=r"^A variant named 'sad \(flipped\)' already exists: it is a null arm of"):
        save_variant(store, "e", {"name": "sad (flipped)", "kind": "baseline"})
    assert (outputs(store), votes(store), stored_json(store)) == (before, before_votes, before_json), "nothing changed"


def test_the_forms_null_arms_decide_the_arms_and_only_their_outputs(store: Store) -> None:
    before, before_votes = outputs(store), votes(store)
    form = {"name": "sad", "kind": "steering", "interventions": [{**SAD, "scope": "all"}]}
    # Saved as the form shows it (both arms): nothing changes.
    save_variant(store, "e", {**form, "null_arms": ["random", "flipped"]}, original_name="sad")
    assert outputs(store) == before and votes(store) == before_votes
    # One arm removed: only its outputs and the vote on it go; the arm kept and 'sad' keep theirs.
    save_variant(store, "e", {**form, "null_arms": ["random"]}, original_name="sad")
    assert [v.name for v in load_spec(store, "e").variants] == ["baseline", "sad", "sad (random)"]
    assert outputs(store) == without(before, "sad (flipped)")
    assert votes(store) == [v for v in before_votes if "sad (flipped)" not in v] and len(votes(store)) == 2
    # A form without the field (a variant changed to another kind, say) removes the arms.
    save_variant(store, "e", form, original_name="sad")
    assert outputs(store) == without(before, *ARMS)
    # Arms added back start without outputs; the next run generates them.
    save_variant(store, "e", {**form, "null_arms": ["flipped"]}, original_name="sad")
    assert [v.name for v in load_spec(store, "e").variants] == ["baseline", "sad", "sad (flipped)"]
    assert outputs(store) == without(before, *ARMS)
    with pytest.raises(SteerLabError, match=r"'Null arms': asks for a flipped arm, but ablate"):
        save_variant(
            store,
            "e",
            {
                "name": "cut",
                "interventions": [{"method": "ablate", "vector": "sad", "layers": [1]}],
                "null_arms": ["flipped"],
            },
        )
    # Deleting the variant deletes its arms with it.
    delete_variant(store, "e", "sad")
    assert [v.name for v in load_spec(store, "e").variants] == ["baseline"]
    assert outputs(store) == without(before, "sad", *ARMS)


def test_the_last_declared_variant_cannot_be_deleted_even_with_arms(empty: Store) -> None:
    store = empty
    data = experiment(null_arms=["random"])
    data["variants"] = data["variants"][1:]
    with store.session() as session:
        save_spec(session, None, parse_experiment(data, Where("one.yaml")))
    with pytest.raises(SteerLabError, match="at least one variant"):
        delete_variant(store, "e", "sad")
    assert [v.name for v in load_spec(store, "e").variants] == ["sad", "sad (random)"]


# --- re-running the experiment file ------------------------------------------------------


def run_file(tmp_path: Path, db: str, data: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "arms.yaml"
    path.write_text(yaml.safe_dump(data))
    code = main(["run", str(path), "--db", db, "--batch-size", "8", "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_rerunning_a_file_that_adds_or_removes_null_arms_extends_the_stored_experiment(
    empty: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, db = empty, empty.url
    code, said = run_file(tmp_path, db, experiment(), capsys)
    assert code == 0 and "4 new generations, 4 in all" in said, said
    plain = outputs(store)

    code, said = run_file(tmp_path, db, experiment(null_arms=["random", "flipped"]), capsys)
    assert code == 0 and "4 new generations, 8 in all" in said and "--replace" not in said, said
    both = outputs(store)
    assert without(both, *ARMS) == plain, "the real variant and the baseline keep their outputs, the same rows"
    assert {key for key in both if key[0] in ARMS} == {(arm, p) for arm in ARMS for p in (0, 1)}
    assert [v.name for v in load_spec(store, "e").variants] == ["baseline", "sad", *ARMS]
    ids = {key: gid for key, (gid, _) in both.items()}
    with store.session() as session:
        repo.add_ratings(
            session,
            get_experiment(session, "e").id,
            [
                repo.NewRating("ann", ids[("sad", 0)], ids[("sad (flipped)", 0)], "left"),
                repo.NewRating("ann", ids[("sad", 1)], ids[("sad (random)", 1)], "right"),
            ],
        )

    code, said = run_file(tmp_path, db, experiment(null_arms=["random"]), capsys)
    assert code == 0 and "0 new generations, 6 in all" in said, said
    assert outputs(store) == without(both, "sad (flipped)"), "only the removed arm's outputs go"
    assert votes(store) == [("sad", "sad (random)", "right")], "and only the votes on them"

    code, said = run_file(tmp_path, db, experiment(), capsys)
    assert code == 0 and outputs(store) == plain
    assert [v.name for v in load_spec(store, "e").variants] == ["baseline", "sad"]

    # A change to what decides the outputs still needs --replace, whatever the null arms; nothing is lost.
    changed = experiment(null_arms=True)
    changed["variants"][1]["interventions"][0]["coefficient"] = 3.0
    code, said = run_file(tmp_path, db, changed, capsys)
    assert code != 0 and "different definition of variant 'sad'" in said and "--replace" in said, said
    assert outputs(store) == plain and [v.name for v in load_spec(store, "e").variants] == ["baseline", "sad"]


def test_a_file_cannot_give_a_stored_variant_an_arm_named_like_a_variant_added_on_the_dashboard(
    empty: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, db = empty, empty.url
    data = experiment()
    assert run_file(tmp_path, db, data, capsys)[0] == 0
    save_variant(store, "e", {"name": "sad (random)", "kind": "prompting", "prefix": "Sadly, "})
    before, before_json = outputs(store), stored_json(store)
    code, said = run_file(tmp_path, db, experiment(null_arms=["random"]), capsys)
    assert code != 0 and "is the random null arm of 'sad'" in said and "arms.yaml" in said, said
    assert (outputs(store), stored_json(store)) == (before, before_json)


# --- the Variants page -------------------------------------------------------------------


def test_the_variants_page_edits_null_arms_and_shows_arms_read_only(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERLAB_DB", store.url)  # the store fixture's copy
    before = outputs(store)
    at = open_page("variants")
    assert at.dataframe[0].value["variant"].tolist() == ["baseline", "sad", *ARMS]

    # An arm is shown, not edited: no form, no Save or Delete, and a way to its variant.
    at.selectbox(key="variant_choice").set_value("sad (random)").run()
    captions = " ".join(c.value for c in at.caption).replace("\\", "")
    assert "Null arm of 'sad': change sad's null arms to change or remove it." in captions
    assert not any(b.label == "Save variant" or b.label.startswith("Delete '") for b in at.button)
    assert not any((r.key or "").startswith("kind:") for r in at.radio), "no form for an arm"
    next(b for b in at.button if b.key == "edit_real:e:sad (random)").click().run()
    assert at.selectbox(key="variant_choice").value == "sad"

    # The variant's form shows its stored null arms and saves what it is set to.
    arms = at.multiselect(key="null_arms:e:sad")
    assert arms.value == ["random", "flipped"]
    arms.set_value(["random"]).run()
    next(b for b in at.button if b.label == "Save variant").click().run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value["variant"].tolist() == ["baseline", "sad", "sad (random)"]
    assert load_spec(store, "e").variants[1].null_arms == ("random",)
    assert outputs(store) == without(before, "sad (flipped)"), "the variant and its kept arm keep their outputs"
    assert at.multiselect(key="null_arms:e:sad").value == ["random"]
