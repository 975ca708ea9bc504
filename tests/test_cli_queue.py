"""The command line's queue: run --queue, worker --once, status; schema; the table's columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from service.cli import build_parser, main
from tests.conftest import MOOD_FILE, needs_models

COMMANDS = (
    "run",
    "worker",
    "status",
    "list",
    "export",
    "report",
    "sweep",
    "calibrate",
    "score",
    "suite",
    "bench",
    "schema",
)


def test_every_command_is_there() -> None:
    parser = build_parser()
    assert parser.prog == "steerlab"
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)  # type: ignore[arg-type]


@needs_models
def test_run_queue_then_a_worker_then_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["prompts"] = data["prompts"][:2]
    data["generation"].update(samples_per_prompt=1, max_new_tokens=4)
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(data))
    db = str(tmp_path / "q.db")

    assert main(["run", str(path), "--db", db, "--queue", "--device", "cpu", "--batch-size", "4"]) == 0
    assert "Queued run 1" in capsys.readouterr().out
    assert main(["run", str(path), "--db", db, "--queue"]) == 2
    assert "already has a queued or running run (run 1)" in capsys.readouterr().err
    assert main(["status", "tinystories_mood", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "Experiment 'tinystories_mood': queued (run 1)" in out and "0 / 18 generations" in out
    assert "queued by  command line on" in out

    assert main(["worker", "--once", "--db", db]) == 0
    assert "Worker stopped after 1 runs" in capsys.readouterr().out
    assert main(["status", "tinystories_mood", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "done (run 1)" in out and "18 / 18 generations" in out and "traceback" not in out
    assert (tmp_path / "q.db.log").read_text().count("Run 1 of 'tinystories_mood' ended: done") == 1
    # Queuing it again: complete, every figure current, so no pointless run is made.
    assert main(["run", str(path), "--db", db, "--queue", "--device", "cpu"]) == 0
    assert "is complete" in capsys.readouterr().out
    assert main(["status", "tinystories_mood", "--db", db]) == 0
    assert "done (run 1)" in capsys.readouterr().out
    # A changed scorer makes its scores stale: now there is something to run.
    data["scorers"][0]["words"] = ["the", "a"]
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--db", db, "--queue", "--device", "cpu"]) == 0
    assert "Queued run 2" in capsys.readouterr().out
    assert main(["worker", "--once", "--db", db]) == 0
    capsys.readouterr()

    assert main(["score", "tinystories_mood", "--db", db, "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    # Columns are the stored figures, whatever method recorded them (no hard-coded method columns).
    assert "steering_parameters" in table and "side_effect_kl" in table and "sad_words (mean [95% CI])" in table


def test_schema_is_written_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert isinstance(schema, dict) and schema
    target = tmp_path / "experiment.schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text()) == schema
