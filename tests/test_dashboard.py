"""Every dashboard page through Streamlit's AppTest: forms, validation, votes."""

from __future__ import annotations

import html
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from db.store import Store
from service.export import export_data
from service.running import RunOptions, run_experiment_file
from tests.conftest import MOOD_FILE, ROOT, needs_models

pytestmark = needs_models
APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def ran_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, run once for the module (3 prompts, 12 tokens); each test gets its own copy."""
    folder = tmp_path_factory.mktemp("dashboard")
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=12)
    data["prompts"] = data["prompts"][:3]
    path = folder / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    file = folder / "dash.db"
    store = Store(str(file))
    try:
        run_experiment_file(store, path, RunOptions(device="cpu"))
    finally:
        store.close()
    return file


@pytest.fixture
def db(ran_once: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    file = tmp_path / "dash.db"
    # SQLite's backup API copies a consistent database (WAL included), unlike copying the file.
    with closing(sqlite3.connect(ran_once)) as source, closing(sqlite3.connect(file)) as target:
        source.backup(target)
    monkeypatch.setenv("STEERLAB_DB", str(file))
    yield file


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page != "experiments":
        at.switch_page(f"views/{page}.py")
        at.run()
    assert not at.exception, at.exception
    return at


def outputs(at: AppTest) -> list[str]:
    """Model outputs shown in output boxes, unescaped."""
    return [
        html.unescape(re.sub(r"<[^>]+>", "", m.value.replace("<br>", "\n")))
        for m in at.markdown
        if "steerlab-output" in m.value
    ]


def texts(at: AppTest) -> str:
    """Every message on the page, as the reader sees it (Markdown escapes removed)."""
    raw = " ".join(str(e.value) for e in [*at.error, *at.success, *at.info, *at.warning, *at.toast])
    return re.sub(r"\\(.)", r"\1", raw)


def button(at: AppTest, label: str) -> Any:
    return next(b for b in at.button if b.label == label)


def test_experiments_page_lists_creates_and_validates(db: Path) -> None:
    at = open_page("experiments")
    assert "tinystories_mood" in at.dataframe[0].value["experiment"].tolist()
    at.text_input[0].set_value("")
    at.text_area[1].set_value("Once upon a time")
    at.button(key="FormSubmitter:new_experiment-Create experiment").click().run()
    assert "new experiment form, 'Name': is empty" in texts(at)
    at.text_input[0].set_value("fresh")
    at.text_area[1].set_value("Once upon a time\nThe dog")
    at.button(key="FormSubmitter:new_experiment-Create experiment").click().run()
    assert not at.exception
    assert "fresh" in at.dataframe[0].value["experiment"].tolist()
    assert at.session_state["current_experiment"] == "fresh", "the new experiment becomes the current one"
    assert at.query_params["experiment"] == "fresh", "and is in the page's link"
    assert "Created 'fresh' with 2 prompts" in texts(at)
    assert at.text_input[0].value == "" and at.text_area[1].value == "", "the form starts empty again"


def test_experiments_page_duplicates_and_deletes(db: Path) -> None:
    at = open_page("experiments")
    at.text_input(key="copy_name:tinystories_mood").set_value("mood_copy")
    button(at, "Duplicate").click().run()
    assert "mood_copy" in at.dataframe[0].value["experiment"].tolist()
    at.selectbox(key="delete_target").set_value("mood_copy").run()
    at.checkbox(key="delete_confirm:mood_copy").check().run()
    button(at, "Delete experiment").click().run()
    assert at.dataframe[0].value["experiment"].tolist() == ["tinystories_mood"]
    assert "Deleted 'mood_copy'" in texts(at)
    assert at.selectbox(key="delete_target").value is None, "the delete form is reset"
    assert not any(b.label == "Delete experiment" for b in at.button)


def test_variants_page_adds_a_steering_variant_and_rejects_bad_input(db: Path) -> None:
    at = open_page("variants")
    assert len(at.dataframe[0].value) == 9
    save = next(b for b in at.button if b.label == "Save variant")
    save.click().run()
    assert "'name': is empty" in texts(at)
    at.text_input(key="name:tinystories_mood:(new variant)").set_value("sad_layer1_x1")
    at.multiselect(key="layers:tinystories_mood:(new variant):0:add").set_value([1])
    at.number_input(key="coefficient:tinystories_mood:(new variant):0:add").set_value(1.0)
    next(b for b in at.button if b.label == "Save variant").click().run()
    assert not at.exception
    assert "sad_layer1_x1" in at.dataframe[0].value["variant"].tolist()
    assert "Saved variant 'sad_layer1_x1'" in texts(at)
    assert at.selectbox(key="variant_choice").value == "sad_layer1_x1", "the editor shows what was saved"
    at.selectbox(key="variant_choice").set_value("(new variant)").run()
    assert at.text_input(key="name:tinystories_mood:(new variant)").value == "", "the new-variant form is empty again"
    # A name that exists already is refused and nothing changes.
    at.text_input(key="name:tinystories_mood:(new variant)").set_value("baseline")
    at.radio(key="kind:tinystories_mood:(new variant)").set_value("baseline")
    next(b for b in at.button if b.label == "Save variant").click().run()
    assert "already exists" in texts(at)
    assert len(at.dataframe[0].value) == 10


def test_run_page_shows_progress_and_finishes(db: Path) -> None:
    at = open_page("run")
    assert "27 / 27" in " ".join(m.value for m in at.metric)


def test_playground_chats_two_turns_side_by_side(db: Path) -> None:
    at = open_page("playground")
    assert "**Unsteered**" in [m.value for m in at.markdown] and outputs(at) == []
    at.selectbox(key="playground_choice:tinystories_mood").set_value("sad_x2").run()
    at.chat_input[0].set_value("Once upon a time, there was a little bird who ").run()
    at.chat_input[0].set_value("The next day, ").run()
    assert not at.exception
    answers = outputs(at)
    assert len(answers) == 4, "two turns in each column"
    steered, plain = answers[0::2], answers[1::2]  # each turn: the user's message, then both answers
    assert steered != plain
    users = [m.value for m in at.markdown if "steerlab-text" in m.value]
    assert len(users) == 2 and "little bird" in users[0] and "The next day" in users[1]
    at.run()  # any widget change reruns the page: the conversation stays
    assert outputs(at) == answers and not at.exception
    button(at, "New conversation").click().run()
    assert outputs(at) == [] and not at.exception
    fresh = open_page("playground")  # a reload starts a new session: an empty chat, nothing broken
    assert outputs(fresh) == [] and not fresh.exception and not fresh.error


def test_playground_custom_edit_off_is_exactly_plain(db: Path) -> None:
    at = open_page("playground")
    at.selectbox(key="playground_choice:tinystories_mood").set_value("custom edit").run()
    next(t for t in at.toggle if t.label == "Steering on").set_value(False).run()
    next(b for b in at.button if b.label.startswith("Send the experiment's first prompt")).click().run()
    steered, plain = outputs(at)
    assert steered == plain
    assert "exactly the unsteered model's again" in texts(at)


def test_rate_page_records_a_vote_with_its_side(db: Path) -> None:
    at = open_page("rate")
    at.text_input[0].set_value("ann")
    button(at, "Start rating").click().run()
    assert at.query_params["rater"] == "ann"
    left, right = outputs(at)
    next(b for b in at.button if b.label == "A is better").click().run()
    assert not at.exception
    assert "A was '" in texts(at)
    votes = export_data(Store(str(db)), "tinystories_mood")["ratings"]
    assert len(votes) == 1 and votes[0]["rater"] == "ann" and votes[0]["choice"] == "left"
    generations = {g["id"]: g["text"] for g in export_data(Store(str(db)), "tinystories_mood")["generations"]}
    assert generations[votes[0]["left_generation"]] == left and generations[votes[0]["right_generation"]] == right


def test_compare_and_report_pages_render(db: Path) -> None:
    at = open_page("compare")
    assert not at.exception and "No votes yet" in texts(at)
    at = open_page("report")
    assert len(at.get("download_button")) == 5  # report, generations CSV, JSON, votes CSV, votes JSONL


def test_run_page_starts_a_background_run_that_finishes(db: Path) -> None:
    from service.editing import save_variant
    from service.worker import Worker

    save_variant(
        Store(str(db)),
        "tinystories_mood",
        {"name": "sad_x3", "interventions": [{"vector": "sad", "layers": [0], "coefficient": 3.0}]},
    )
    at = open_page("run")
    assert "27 / 30" in " ".join(m.value for m in at.metric)
    next(b for b in at.button if b.label == "Resume run").click().run()
    captions = " ".join(str(c.value) for c in at.caption)
    assert not at.exception and "is queued; a worker starts it shortly" in captions
    assert Worker(Store(str(db)), once=True).run() == 1  # the worker process's loop, in this process
    at.run()
    assert "30 / 30" in " ".join(m.value for m in at.metric)
    assert "All generations are done" in texts(at)


def test_sweep_page_runs_a_grid_and_promotes_a_cell(db: Path) -> None:
    from service.worker import Worker

    at = open_page("sweep")
    at.text_input[0].set_value("1, 2")
    at.button(key="FormSubmitter:sweep_form-Start sweep").click().run()
    assert not at.exception and "Sweep queued" in texts(at)
    assert Worker(Store(str(db)), once=True).run() == 1
    at.run()
    assert not at.exception
    assert "Recommended: layer" in texts(at)
    next(b for b in at.button if b.label == "Add as variants").click().run()
    assert "Added sad_L" in texts(at)


def test_variants_page_builds_forms_for_every_registered_method(db: Path) -> None:
    at = open_page("variants")
    k = "tinystories_mood:(new variant)"
    at.text_input(key=f"name:{k}").set_value("nudged")
    at.selectbox(key=f"method:{k}:0").set_value("nudge").run()
    at.text_area(key=f"words:{k}:0:nudge").set_value("sad\ncried")
    at.number_input(key=f"steps:{k}:0:nudge").set_value(3)
    next(b for b in at.button if b.label == "Save variant").click().run()
    assert not at.exception, at.exception
    assert "Saved variant 'nudged'" in texts(at)
    assert "nudged" in at.dataframe[0].value["variant"].tolist()
    at.selectbox(key="variant_choice").set_value("(new variant)").run()
    at.text_input(key=f"name:{k}").set_value("gated")
    at.selectbox(key=f"method:{k}:0").set_value("conditional").run()
    at.text_area(key=f"condition.applies:{k}:0:conditional").set_value("a sad day")
    at.text_area(key=f"condition.not_applies:{k}:0:conditional").set_value("a happy day")
    at.number_input(key=f"condition.threshold:{k}:0:conditional").set_value(2.0)
    next(b for b in at.button if b.label == "Save variant").click().run()
    assert "outside the range of cosine similarity" in texts(at)


def test_variants_page_adds_a_lora_baseline(db: Path) -> None:
    at = open_page("variants")
    k = "tinystories_mood:(new variant)"
    at.radio(key=f"kind:{k}").set_value("lora").run()
    at.text_input(key=f"name:{k}").set_value("lora_sad")
    at.selectbox(key=f"train_source:{k}").set_value("sad").run()
    next(b for b in at.button if b.label == "Save variant").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table[table["variant"] == "lora_sad"]["kind"].tolist() == ["lora"]
    assert at.selectbox(key="variant_choice").value == "lora_sad", "the saved LoRA variant opens in the editor"
    assert at.radio(key="kind:tinystories_mood:lora_sad").value == "lora"


def test_an_edit_far_larger_than_the_hidden_state_is_shown_and_refused(db: Path) -> None:
    from engine.errors import SteerLabError
    from service.editing import save_variant

    huge = {"name": "huge", "interventions": [{"vector": "sad", "layers": [0], "coefficient": 5000.0}]}
    with pytest.raises(
        SteerLabError, match=r"edit 1 adds \S+ times the typical hidden-state norm at layer 0 \(limit 20\)"
    ):
        save_variant(Store(str(db)), "tinystories_mood", huge)
    assert "huge" not in [v["name"] for v in export_data(Store(str(db)), "tinystories_mood")["variants"]]
    at = open_page("variants")
    at.selectbox(key="variant_choice").set_value("sad_x2").run()
    assert any(re.search(r"Edit 1 at layer 0 adds 0\.\d+× the typical hidden-state norm", c.value) for c in at.caption)
    at.number_input(key="coefficient:tinystories_mood:sad_x2:0:add").set_value(500.0).run()
    assert any("far more than steering usually needs" in w.value for w in at.warning)


def test_example_buttons_offer_the_story_and_the_chat_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERLAB_DB", str(tmp_path / "empty.db"))
    at = open_page("experiments")
    labels = [b.label for b in at.button]
    assert "Add the example experiment (tinystories_mood)" in labels
    # The chat example is added from its file without loading SmolLM2 (its layer count comes from the GGUF header).
    button(at, "Add the example experiment (smollm2_tone)").click().run()
    assert not at.exception, at.exception
    assert "Added the example 'smollm2_tone' with 5 variants" in texts(at)
    assert at.dataframe[0].value["experiment"].tolist() == ["smollm2_tone"]
    assert not any(b.label.startswith("Add the example") for b in at.button), "examples are offered on an empty store"
