"""Derived figures follow the definition: a changed scorer, references or training texts make the
figures computed from them stale (reported with a reason), the next run recomputes exactly those,
and a run with nothing changed recomputes nothing. Real runs of TinyStories-656K, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sqlalchemy import text

from db.store import Store
from engine.experiment_file import load_experiment_file
from service.catalog import import_experiment, load_spec
from service.running import RunOptions, run_experiment_file
from service.scoring import score_experiment
from service.staleness import stale_figures, warning
from service.summary import variant_summaries
from tests.conftest import ROOT, TINYSTORIES, needs_models
from tests.postgres import copy_store_url, new_store_url

pytestmark = [needs_models, pytest.mark.both_stores]
NAME = "stale_mood"
SAD = ["sad", "cry", "cried", "tears", "alone"]


def definition(**changes: Any) -> dict[str, Any]:
    """A small mood experiment: a baseline, a steered and a LoRA variant, a word and a reference scorer."""
    data: dict[str, Any] = {
        "name": NAME,
        "model": TINYSTORIES,
        "prompts": [
            "Once upon a time, there was a little bird who",
            "Tom went to the park. He",
            "Sara had a doll. She",
        ],
        "generation": {"max_new_tokens": 12, "do_sample": True, "temperature": 0.8, "seed": 3, "samples_per_prompt": 2},
        "vectors": {
            "sad": {
                "pairs": [
                    ["Lily was very sad and she cried.", "Lily was very happy and she smiled."],
                    ["Tom felt lonely and upset.", "Tom felt cheerful and glad."],
                ]
            }
        },
        "variants": [
            {"name": "baseline"},
            {
                "name": "sad_x2",
                "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 2.0}],
            },
            {"name": "lora_sad", "train": {"method": "lora", "epochs": 1, "learning_rate": 0.002, "rank": 4}},
        ],
        "scorers": [
            {"name": "sad_words", "kind": "words", "words": SAD},
            {"name": "overlap", "kind": "reference", "metric": "token_f1"},
        ],
        "references": [["the bird flew away"], ["he played with a ball"], ["she loved her doll"]],
        "training_examples": ["Lily was sad and cried.", "The dog was alone and sad.", "Tears fell down."],
        "neutral_prompts": ["Once upon a time"],
    }
    data.update(changes)
    return data


def ran(backend: str, folder: Path, request: pytest.FixtureRequest) -> tuple[str, Path]:
    """A store where the definition has run once: its URL, and the folder of its trained weights."""
    store = Store(new_store_url(backend, folder, request))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STEERLAB_CACHE", str(folder / "cache"))  # trained weights, not in the project
        assert run(store, write(folder, definition())) == "done"
    store.close()
    return store.url, folder / "cache"


@pytest.fixture(scope="module")
def ran_sqlite(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[str, Path]:
    return ran("sqlite", tmp_path_factory.mktemp("stale"), request)


@pytest.fixture(scope="module")
def ran_postgresql(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[str, Path]:
    return ran("postgresql", tmp_path_factory.mktemp("stale"), request)


@pytest.fixture
def env(
    store_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> tuple[Store, Path]:
    """This test's own copy of the run store (and of its trained weights), and the definition's file."""
    url, cache = request.getfixturevalue(f"ran_{store_backend}")
    shutil.copytree(cache, tmp_path / "cache")
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))
    store = Store(copy_store_url(url, tmp_path, request))
    return store, write(tmp_path, definition())


def write(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "stale.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run(store: Store, path: Path) -> str:
    return run_experiment_file(store, path, RunOptions(device="cpu", batch_size=8)).status


def redefine(store: Store, path: Path, data: dict[str, Any]) -> None:
    """Store a changed definition without running it (as saving the file on the dashboard would)."""
    write(path.parent, data)
    with store.session() as session:
        import_experiment(session, load_experiment_file(path), str(path), {})


def metric_rows(store: Store, name: str) -> dict[int, tuple[int, float, str]]:
    """generation id -> (metric row id, value, source hash) of one metric."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT generation_id, id, value, source_hash FROM generation_metrics WHERE name = :name"),
            {"name": name},
        )
        return {g: (i, v, h) for g, i, v, h in rows}


def variant_rows(store: Store) -> list[tuple[object, ...]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT v.name, m.id, m.name, m.value, m.source_hash, m.updated_at "
                "FROM variant_metrics m JOIN variants v ON v.id = m.variant_id ORDER BY m.id"
            )
        )
        return [tuple(r) for r in rows]


def texts(store: Store) -> dict[tuple[str, int, int], tuple[int, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT v.name, g.prompt_id, g.sample_index, g.id, g.text "
                "FROM generations g JOIN variants v ON v.id = g.variant_id"
            )
        )
        return {(v, p, s): (i, t) for v, p, s, i, t in rows}


def means(store: Store, scorer: str) -> dict[str, float]:
    return {s.name: s.scores[scorer].value for s in variant_summaries(store, NAME, bootstrap_rounds=10)}


def fresh_means(store: Store, scorer: str) -> dict[str, float]:
    """The means computed from scratch with today's definition of ``scorer``."""
    spec = load_spec(store, NAME)
    (definition_now,) = [s for s in spec.scorers if s.name == scorer]
    with store.engine.connect() as conn:
        rows = [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT v.name, p.position, g.text FROM generations g "
                    "JOIN variants v ON v.id = g.variant_id JOIN prompts p ON p.id = g.prompt_id"
                )
            )
        ]
    out = {}
    for variant in {v for v, _, _ in rows}:
        mine = [(position, story) for v, position, story in rows if v == variant]
        references = [spec.references[position] for position, _ in mine] if spec.references else None
        out[variant] = float(np.mean(definition_now.score([t for _, t in mine], references)))
    return out


def compare_page_warnings(store: Store, monkeypatch: pytest.MonkeyPatch) -> str:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("STEERLAB_DB", store.url.removeprefix("sqlite:///"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/compare.py")
    at.run()
    assert not at.exception, at.exception
    return " ".join(str(w.value) for w in at.warning).replace("\\", "")  # without md()'s escapes


def test_redefining_a_scorer_marks_its_scores_stale_and_the_next_run_recomputes_only_them(
    env: tuple[Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, path = env
    assert stale_figures(store, NAME) == [] and warning([]) == ""
    old_means, overlap_before = means(store, "sad_words"), metric_rows(store, "overlap")
    outputs = texts(store)

    scorers = [{"name": "sad_words", "kind": "words", "words": ["the", "a"]}, definition()["scorers"][1]]
    redefine(store, path, definition(scorers=scorers))
    (stale,) = stale_figures(store, NAME)
    assert (stale.kind, stale.name, stale.count) == ("score", "sad_words", 18)
    assert (
        "computed before the scorer's definition changed" in stale.reason
        and "steerlab score stale_mood" in stale.reason
    )
    assert "'sad_words' scores" in warning([stale])
    assert means(store, "sad_words") == old_means, "until recomputed, the stored (stale) figures are shown as stored"
    assert "18 'sad_words' scores were computed before" in compare_page_warnings(store, monkeypatch)

    assert run(store, path) == "done"
    assert stale_figures(store, NAME) == []
    new_means = means(store, "sad_words")
    assert new_means != old_means
    assert new_means == pytest.approx(fresh_means(store, "sad_words"))
    assert min(new_means.values()) > 0.05, "'the' and 'a' are in every story"
    assert texts(store) == outputs, "scoring again generates nothing again"
    assert metric_rows(store, "overlap") == overlap_before, "the other scorer's scores are kept as they were"
    assert "Stale figures" not in compare_page_warnings(store, monkeypatch)


def test_a_run_with_nothing_changed_recomputes_nothing(env: tuple[Store, Path]) -> None:
    store, path = env
    scores = {m: metric_rows(store, m) for m in ("sad_words", "overlap", "fluency_ppl")}
    figures, outputs = variant_rows(store), texts(store)
    assert all(h for rows in scores.values() for _, _, h in rows.values()), "every score records its source"
    assert run(store, path) == "done"
    assert {m: metric_rows(store, m) for m in scores} == scores
    assert variant_rows(store) == figures and texts(store) == outputs


def test_changed_references_recompute_reference_scores_only(env: tuple[Store, Path]) -> None:
    store, path = env
    words, overlap = metric_rows(store, "sad_words"), metric_rows(store, "overlap")
    redefine(store, path, definition(references=[["once upon a time"], ["tom went to the park"], ["sara had a doll"]]))
    (stale,) = stale_figures(store, NAME)
    assert stale.name == "overlap" and "the scorer's definition or the references" in stale.reason
    assert score_experiment(store, NAME) == 18, "`steerlab score` recomputes them on demand"
    assert run(store, path) == "done"
    assert stale_figures(store, NAME) == []
    assert metric_rows(store, "sad_words") == words
    after = metric_rows(store, "overlap")
    assert set(after) == set(overlap) and all(after[g][2] != overlap[g][2] for g in after)
    assert means(store, "overlap") == pytest.approx(fresh_means(store, "overlap"))


def test_changed_training_examples_retrain_the_baseline_and_keep_the_others(env: tuple[Store, Path]) -> None:
    store, path = env
    outputs, figures = texts(store), variant_rows(store)
    redefine(store, path, definition(training_examples=["Ben was happy and laughed.", "The sun was bright."]))
    # The trained variant's outputs came from a model trained on other texts: they are dropped
    # with its figures (as for any changed variant); the other variants keep theirs.
    kept = texts(store)
    assert {k[0] for k in kept} == {"baseline", "sad_x2"}
    assert kept == {k: v for k, v in outputs.items() if k[0] != "lora_sad"}
    assert run(store, path) == "done"
    after = texts(store)
    assert {k for k in after if k[0] == "lora_sad"} == {k for k in outputs if k[0] == "lora_sad"}
    assert {k: v for k, v in after.items() if k[0] != "lora_sad"} == kept
    lora_before = {r[2]: r[4] for r in figures if r[0] == "lora_sad"}
    lora_after = {r[2]: r[4] for r in variant_rows(store) if r[0] == "lora_sad"}
    assert set(lora_after) == set(lora_before) and all(lora_after[n] != lora_before[n] for n in lora_after)
    assert [r for r in variant_rows(store) if r[0] != "lora_sad"] == [r for r in figures if r[0] != "lora_sad"]
    assert stale_figures(store, NAME) == []


def test_changed_neutral_prompts_mark_variant_figures_stale_until_measured_again(env: tuple[Store, Path]) -> None:
    store, path = env
    redefine(store, path, definition(neutral_prompts=["Once upon a time", "The cat sat"]))
    stale = stale_figures(store, NAME)
    assert {(s.kind, s.name) for s in stale} == {("variant figures", v) for v in ("baseline", "sad_x2", "lora_sad")}
    assert "measured again at the next run" in stale[0].reason
    assert run(store, path) == "done"
    assert stale_figures(store, NAME) == []


def test_source_hashes_depend_on_exactly_what_each_figure_is_computed_from() -> None:
    from engine.fields import Where
    from engine.spec import parse_experiment
    from service.provenance import canonical_hash, scorer_hash, variant_figures_hash, variant_hash

    def spec(**changes: Any) -> Any:
        return parse_experiment(definition(**changes), Where("test"))

    base = spec()
    words, overlap = base.scorers
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    other_refs = spec(references=[["x"], ["y"], ["z"]])
    assert scorer_hash(other_refs, other_refs.scorers[0]) == scorer_hash(base, words), "words ignore references"
    assert scorer_hash(other_refs, other_refs.scorers[1]) != scorer_hash(base, overlap)
    described = spec(variants=[{**v, "description": "a note"} for v in definition()["variants"]])
    assert [variant_hash(described, v) for v in described.variants] == [variant_hash(base, v) for v in base.variants]
    new_pairs = spec(vectors={"sad": {"pairs": [["I am sad.", "I am glad."]]}})
    changed = [variant_hash(new_pairs, v) != variant_hash(base, v) for v in new_pairs.variants]
    assert changed == [False, True, False], "only the variant that uses the vector changes"
    probe = spec(probe_prompt="The end")
    assert all(variant_figures_hash(probe, v) != variant_figures_hash(base, v) for v in probe.variants)
    assert [variant_hash(probe, v) for v in probe.variants] == [variant_hash(base, v) for v in base.variants]
