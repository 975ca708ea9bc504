"""Run health: absurd coefficients, run phases, stored errors, the shared live-status fragment."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db import runs
from db.schema import Generation, GenerationMetric, VariantMetric
from db.store import Store
from engine.experiment_file import load_experiment_file
from engine.generation import Decoding, broken_rows, generate, generate_checked
from engine.runner import Progress
from engine.steering import BatchSteering
from engine.vectors import SteeringVector
from service import measurements, running, vector_store
from service.catalog import save_spec
from service.jobs import enqueue, health, status
from service.running import GENERATING, MEASURING, SCORING, RunOptions, run_experiment_file, run_stored
from service.scoring import score_experiment
from service.sweeps import create_sweep
from service.worker import Worker
from tests.conftest import MOOD_FILE, ROOT, needs_models
from tests.helpers import add_edit, random_vector, tokens

pytestmark = needs_models
APP = str(ROOT / "dashboard" / "app.py")
NAME = "tinystories_mood"


def small_file(tmp_path: Path, steered: bool = False, do_sample: bool = True, prompts: int = 1) -> Path:
    """The mood experiment cut to a few prompts and tokens; ``steered``: a baseline and one add variant."""
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["prompts"] = data["prompts"][:prompts]
    data["generation"].update(samples_per_prompt=1, max_new_tokens=6, do_sample=do_sample)
    if steered:
        add = {"method": "add", "vector": "sad", "layers": [0], "coefficient": 1.0, "scope": "all"}
        data["variants"] = [{"name": "baseline"}, {"name": "huge", "interventions": [add]}]
    else:
        data["variants"] = data["variants"][:2]
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def blow_up(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    """Make every run's vectors ``factor`` times longer: a coefficient of ``factor``.

    Experiment files and forms refuse such coefficients (and vector files with non-finite
    numbers), but a long enough vector, or a half-precision model, overflows at far smaller
    ones; the engine must cope whatever the cause.
    """
    real = vector_store.ensure_vectors

    def scaled(*args: Any, **kwargs: Any) -> dict[str, SteeringVector]:
        vectors = real(*args, **kwargs)
        return {n: replace(v, directions=v.directions * factor) for n, v in vectors.items()}

    monkeypatch.setattr(running, "ensure_vectors", scaled)


def store_file(tmp_path: Path, path: Path) -> Store:
    store = Store(str(tmp_path / "health.db"))
    with store.session() as session:
        save_spec(session, None, load_experiment_file(path))
    return store


# --- the decode loop ----------------------------------------------------------------


def test_broken_rows_flags_nan_inf_and_flat_logits() -> None:
    import torch

    logits = torch.tensor(
        [
            [1.0, 2.0, 3.0],
            [float("nan"), 1.0, 2.0],
            [0.0, 0.0, 0.0],
            [1.0, float("inf"), 0.0],
            [-float("inf"), 1.0, 2.0],
        ]
    )
    assert broken_rows(logits).tolist() == [False, True, True, True, False]


@pytest.mark.parametrize("coefficient", [1e30, 1e308])
@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_stops_a_broken_row_and_leaves_the_others_alone(
    tiny: Any, coefficient: float, do_sample: bool
) -> None:
    prompts = [tokens(tiny, "Once upon a time"), tokens(tiny, "The dog ran to the")]
    decoding = Decoding(max_new_tokens=6, do_sample=do_sample, temperature=0.8, top_k=40)
    edit = add_edit(tiny, random_vector(tiny, scale=1.0), [0], coefficient)
    seeds = [3, 4] if do_sample else None
    out = generate_checked(tiny, prompts, decoding, seeds, BatchSteering(tiny, [[edit], []]))
    assert out.non_finite == [True, False]
    assert out.tokens[0] == [], "a row broken from the prompt on generates nothing"
    plain = generate(tiny, prompts[1:], decoding, seeds[1:] if seeds else None)
    assert out.tokens[1] == plain[0], "the healthy row is what it would be alone"


# --- runs -----------------------------------------------------------------------------


@pytest.mark.parametrize("coefficient", [1e30, 1e308])
@pytest.mark.parametrize("do_sample", [False, True])
def test_a_huge_coefficient_run_completes_and_is_reported(
    tmp_path: Path, tiny: Any, monkeypatch: pytest.MonkeyPatch, coefficient: float, do_sample: bool
) -> None:
    store = store_file(tmp_path, small_file(tmp_path, steered=True, do_sample=do_sample, prompts=2))
    blow_up(monkeypatch, coefficient)
    result = run_stored(store, NAME, RunOptions(device="cpu"), model=tiny)
    assert result.status == "done"
    with store.session() as session:
        flags = {(g.variant.name, g.non_finite) for g in session.scalars(select(Generation))}
        values = [m.value for m in session.scalars(select(GenerationMetric))]
        values += [m.value for m in session.scalars(select(VariantMetric))]
    assert flags == {("baseline", False), ("huge", True)}
    assert values and all(math.isfinite(v) for v in values), "no NaN or inf is stored"
    report = {h.variant: h for h in health(store, NAME)}
    assert (report["huge"].generations, report["huge"].non_finite, report["huge"].empty) == (2, 2, 2)
    assert report["baseline"].ok
    s = status(store, NAME)
    assert (s.state, s.phase, s.done, s.total, s.error) == ("done", "", 4, 4, "")


def test_the_phase_is_stored_while_the_run_works(tmp_path: Path, tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_file(tmp_path, small_file(tmp_path))
    seen: list[tuple[str, str, float | None]] = []

    def look(_progress: Progress | None = None) -> None:
        s = status(Store(store.url), NAME)  # another connection, like another tab
        seen.append((s.phase, s.describe(), s.seconds_left))

    measure = measurements.store_variant_figures
    score = score_experiment

    def measuring(*args: Any) -> None:
        look()
        measure(*args)

    def scoring(*args: Any) -> int:
        look()
        return score(*args)

    monkeypatch.setattr(running, "store_variant_figures", measuring)
    monkeypatch.setattr(running, "score_experiment", scoring)
    run_stored(store, NAME, RunOptions(device="cpu"), progress=look, model=tiny)
    phases = [p for p, _, _ in seen]
    assert phases[0] == GENERATING and phases[-2:] == [MEASURING, SCORING]
    assert seen[-1][1] == f"2 / 2 generations · running · {SCORING}"
    assert seen[-1][2] is None, "no time left is promised while the run measures and scores"
    assert status(store, NAME).phase == ""


def test_a_failed_run_stores_its_error_and_phase(tmp_path: Path, tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_file(tmp_path, small_file(tmp_path))

    def broken(*_args: Any) -> int:
        raise RuntimeError("the scorer fell over")

    monkeypatch.setattr(running, "score_experiment", broken)
    with pytest.raises(RuntimeError):
        run_stored(store, NAME, RunOptions(device="cpu"), model=tiny)
    s = status(store, NAME)
    assert (s.state, s.phase, s.error) == ("failed", SCORING, "RuntimeError: the scorer fell over")
    assert s.describe() == f"2 / 2 generations · failed while {SCORING}"

    enqueue(store, NAME, RunOptions(device="cpu"))  # a worker's run: its error and traceback are stored
    assert Worker(store, once=True).run() == 1
    s = status(store, NAME)
    assert s.state == "failed" and s.error == "RuntimeError: the scorer fell over" and s.run_id == 2
    assert "the scorer fell over" in s.traceback and "Traceback (most recent call last)" in s.traceback


# --- dashboard ------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stored, finished run with a broken-down variant; its sweep (one cell) run as well."""
    file = tmp_path / "dash.db"
    store = Store(str(file))
    blow_up(monkeypatch, 1e30)
    run_experiment_file(store, small_file(tmp_path, steered=True), RunOptions(device="cpu"))
    sweep = create_sweep(store, NAME, {"vector": "sad", "scorer": "sad_words", "layers": [0], "coefficients": [1]})
    run_stored(store, sweep, RunOptions(device="cpu"))
    monkeypatch.setenv("STEERLAB_DB", str(file))
    yield file


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for e in [*at.error, *at.success, *at.info, *at.warning])


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_run_page_shows_phase_state_and_the_broken_variant(db: Path) -> None:
    at = open_page("run")
    shown = metrics(at)
    assert (shown["Done"], shown["State"], shown["Phase"]) == ("2 / 2", "done", "–")
    assert "All generations are done" in texts(at)
    assert "**huge**: 1 of 1 outputs stopped early" in texts(at) and "1 of 1 outputs are empty" in texts(at)
    assert next(b for b in at.button if b.label == "Cancel run").disabled


def test_run_page_shows_a_failed_runs_stored_error(db: Path) -> None:
    from service.catalog import get_experiment

    with Store(str(db)).session() as session:
        run = runs.latest_run(session, get_experiment(session, NAME).id)
        assert run is not None
        runs.finish_run(session, run.id, "failed", "CUDA out of memory [see](http://x)", "Traceback: line 1 in x")
        runs.set_run_phase(session, run.id, SCORING)
    at = open_page("run")
    assert metrics(at)["Phase"] == SCORING
    assert "The failed run stopped while scoring: CUDA out of memory \\[see\\]\\(http" in texts(at)
    assert [c.value for c in at.code] == ["Traceback: line 1 in x"]
    assert next(b for b in at.button if b.label == "Resume run").disabled is False


def test_run_page_queues_and_says_when_no_worker_is_there(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.catalog import get_experiment
    from service.editing import save_variant

    save_variant(Store(str(db)), NAME, {"name": "prompt_only", "prefix": "A sad story. "})
    at = open_page("run")
    next(b for b in at.button if b.label == "Resume run").click().run()
    captions = " ".join(str(c.value) for c in at.caption)
    assert metrics(at)["State"] == "queued" and "is queued; a worker starts it shortly" in captions
    assert "No worker is running" not in texts(at), "a worker has a moment to claim it"
    monkeypatch.setenv("STEERLAB_POLL_SECONDS", "0.01")
    with Store(str(db)).session() as session:  # as if queued long ago, with no worker to claim it
        run = runs.latest_run(session, get_experiment(session, NAME).id)
        assert run is not None and run.status == "queued"
        run.updated_at = run.updated_at.replace(year=run.updated_at.year - 1)
    at.run()
    assert "No worker is running: 1 queued run is waiting; start one with `steerlab worker`" in texts(at)
    captions = " ".join(str(c.value) for c in at.caption)
    assert "is queued." in captions and "starts it shortly" not in captions, "no promise the page then denies"
    next(b for b in at.button if b.label == "Cancel run").click().run()
    at.run()  # the status drawn above the button was read before the click
    assert metrics(at)["State"] == "cancelled" and "No worker is running" not in texts(at)


def test_the_status_reruns_the_page_when_it_sees_the_run_end(db: Path) -> None:
    at = open_page("run")
    seen = f"run_status_seen:run:{NAME}"
    run_id = at.session_state[seen][0]
    assert at.session_state[seen] == (run_id, False)
    at.session_state[seen] = (run_id, True)  # the previous look saw it running; it has finished since
    at.run()
    assert not at.exception and at.session_state[seen] == (run_id, False)
    assert "All generations are done" in texts(at)


def test_sweep_page_has_the_live_status_and_its_results(db: Path) -> None:
    at = open_page("sweep")
    shown = metrics(at)
    assert shown["Done"] == "2 / 2" and shown["State"] == "done" and "Rate" in shown and "Time left" in shown
    assert next(b for b in at.button if b.label == "Cancel sweep").disabled
    assert not [b for b in at.button if b.label == "Resume sweep"], "nothing to resume"
    assert at.dataframe, "the finished sweep's results are shown"
    assert "**L0\\_x1**: 1 of 1 outputs stopped early" in texts(at)


def test_finished_since_last_look() -> None:
    from dashboard.run_status import finished_since_last_look

    state: dict[str | int, Any] = {}
    looks = [(1, False), (1, True), (1, True), (1, False), (1, False), (2, False), (2, False)]
    seen = [finished_since_last_look(state, "k", run, under_way) for run, under_way in looks]
    # Ends: run 1 stops; run 2 was too short to be seen under way.
    assert seen == [False, False, False, True, False, True, False]
