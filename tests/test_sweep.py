"""The layer x coefficient sweep on TinyStories-656K: finds the responsive layer, resumes, refuses huge grids."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from db.store import Store
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from engine.sweep import Cell, pareto_front, recommend
from service.catalog import load_spec
from service.cli import main
from service.running import RunOptions
from service.sweeps import analyse, promote_cells, run_sweep_file
from tests.conftest import MOOD_FILE, needs_models


class CancelAfter:
    def __init__(self, reports: int) -> None:
        self.reports, self.seen = reports, 0

    def progress(self, _p: object) -> None:
        self.seen += 1

    def is_set(self) -> bool:
        return self.seen > self.reports


@needs_models
def test_sweep_recommends_the_responsive_layer_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # By hand (README, experiment file): layer 1 at coefficient 2 raises the sad-word rate
    # most while perplexity stays within 1.5x the baseline's; layer 0 degrades the text from
    # coefficient 2 and turns to gibberish from about 3 on.
    store = Store(str(tmp_path / "sweep.db"))
    flag = CancelAfter(reports=2)
    first, _ = run_sweep_file(store, MOOD_FILE, RunOptions(batch_size=32, device="cpu"), flag.progress, flag)
    assert first.status == "cancelled"
    with sqlite3.connect(tmp_path / "sweep.db") as conn:
        partial = conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    assert 0 < partial < 330

    second, result = run_sweep_file(store, MOOD_FILE, RunOptions(batch_size=32, device="cpu"))
    assert second.status == "done" and second.generated == 330 - partial
    with sqlite3.connect(tmp_path / "sweep.db") as conn:
        keys = conn.execute("SELECT variant_id, prompt_id, sample_index FROM generations").fetchall()
    assert len(keys) == len(set(keys)) == 330

    assert len(result.cells) == 10
    assert result.recommended is not None and result.recommended.layer == 1
    assert result.recommended.behaviour > result.baseline_behaviour
    assert result.recommended.perplexity <= 1.5 * result.baseline_perplexity
    front = {(c.layer, c.coefficient) for c in result.front}
    assert (1, 2.0) in front and (result.recommended.layer, result.recommended.coefficient) in front

    # Chosen cells become variants of the experiment in one step.
    assert (
        main(["sweep", str(MOOD_FILE), "--db", str(tmp_path / "sweep.db"), "--device", "cpu", "--add-cells", "L1_x2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "Recommended: layer 1" in out and "Added sad_L1_x2" in out
    assert "sad_L1_x2" in [v.name for v in load_spec(store, "tinystories_mood").variants]
    assert analyse(store, "tinystories_mood__sweep").recommended == result.recommended
    with pytest.raises(SteerLabError, match="not a sweep cell name"):
        promote_cells(store, "tinystories_mood", "tinystories_mood__sweep", ["best"])


def test_grid_over_the_limit_is_one_sentence(tmp_path: Path) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["sweep"].update(coefficients=[0.5 * i for i in range(1, 40)], max_cells=20)
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SteerLabError) as info:
        run_sweep_file(Store(str(tmp_path / "big.db")), path, RunOptions(device="cpu"))
    message = str(info.value)
    assert "the grid has 78 cells (2 layers x 39 coefficients), above the limit of 20 set by max_cells" in message
    assert (
        not (tmp_path / "big.db").exists()
        or sqlite3.connect(tmp_path / "big.db").execute("SELECT count(*) FROM experiments").fetchone()[0] == 0
    )


def test_sweep_section_is_validated(tmp_path: Path) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["sweep"]["scorer"] = "joy"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SteerLabError, match=r"sweep\.scorer \(line \d+\): names scorer 'joy'"):
        load_experiment_file(path)


def test_pareto_front_and_recommendation() -> None:
    cells = [
        Cell(0, 1.0, 0.02, 0.01, 0.03, 20.0, 10),
        Cell(0, 2.0, 0.05, 0.03, 0.07, 60.0, 10),
        Cell(1, 1.0, 0.03, 0.02, 0.04, 18.0, 10),
        Cell(1, 2.0, 0.01, 0.00, 0.02, 30.0, 10),
    ]
    assert [c.name for c in pareto_front(cells)] == ["L1_x1", "L0_x2"]
    assert recommend(cells, baseline_perplexity=15.0, tolerance=1.5).name == "L1_x1"  # type: ignore[union-attr]
    assert recommend(cells, baseline_perplexity=5.0, tolerance=1.5).name == "L1_x1"  # type: ignore[union-attr]
