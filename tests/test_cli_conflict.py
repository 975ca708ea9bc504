"""Re-running a file against a stored experiment that has more than the file lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from db.store import Store
from service.cli import main
from service.editing import save_variant, save_vector
from tests.conftest import MOOD_FILE, needs_models

pytestmark = needs_models


def test_rerun_keeps_variants_added_on_the_dashboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["prompts"] = data["prompts"][:1]
    data["variants"] = [v for v in data["variants"] if v["name"] in ("baseline", "sad_x2")]
    data["generation"].update(samples_per_prompt=1, max_new_tokens=4)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    db = str(tmp_path / "t.db")
    run = ["run", str(path), "--db", db, "--device", "cpu"]
    assert main(run) == 0
    store = Store(db)
    try:  # what the Variants page does: a vector and two variants the file does not list
        save_vector(store, "tinystories_mood", "happy", {"method": "mean_diff", "pairs": [["happy", "sad"]]})
        save_variant(store, "tinystories_mood", {"name": "dash_prompt", "prefix": "A sad story. "})
        save_variant(
            store,
            "tinystories_mood",
            {
                "name": "dash_happy",
                "interventions": [{"method": "add", "vector": "happy", "layers": [1], "coefficient": 1.0}],
            },
        )
    finally:
        store.close()
    capsys.readouterr()

    assert main(run) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "2 new generations, 4 in all" in out and "dash_prompt" in out and "dash_happy" in out

    data["variants"][1]["interventions"][0]["coefficient"] = 3.0
    path.write_text(yaml.safe_dump(data))
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "different definition of variant 'sad_x2'" in err and "--replace" in err
    assert "removed" not in err
