"""The command line as a user runs it: run, list, export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.cli import main
from tests.conftest import MOOD_FILE, ROOT, needs_models


@needs_models
def test_run_list_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=12)
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    db = str(tmp_path / "cli.db")

    assert main(["run", str(path), "--db", db, "--batch-size", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "run 1 done, 70 new generations" in out
    for variant in ("baseline", "sad_x2", "prompt_sad"):
        assert variant in out
    assert "sad_words (mean [95% CI])" in out

    assert main(["list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "tinystories_mood" in listing and "70" in listing and "done" in listing

    assert main(["export", "tinystories_mood", "--format", "json", "-o", str(tmp_path / "e.json"), "--db", db]) == 0
    exported = json.loads((tmp_path / "e.json").read_text())
    assert {"experiment", "prompts", "variants", "generations", "ratings"} <= set(exported)
    assert len(exported["generations"]) == 70 and len(exported["prompts"]) == 10
    first = exported["generations"][0]
    assert {"variant", "prompt", "sample", "text"} <= set(first)
    steered = next(v for v in exported["variants"] if v["name"] == "sad_x2")
    assert steered["reversibility"]["max_abs_logit_diff_after_removal"] == 0.0
    assert steered["compute"]["steering_parameters"] == 128
    assert steered["compute"]["tokens_per_second"] > 0 and steered["compute"]["peak_memory_bytes"] > 0
    assert steered["compute"]["extraction_seconds"] > 0
    assert steered["scores"]["sad_words"]["n"] == 10

    assert main(["export", "tinystories_mood", "--format", "csv", "-o", str(tmp_path / "e.csv"), "--db", db]) == 0
    rows = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert len(rows) == 70 and {"variant", "prompt", "sample", "text", "sad_words", "wins"} <= set(rows[0])


def test_module_entry_point_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "run" in done.stdout and "bench" in done.stdout
