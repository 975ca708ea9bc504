"""Background runs: start, watch from another store connection, cancel, resume."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from db.store import Store
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from service.catalog import save_spec
from service.jobs import RunManager, cancel, status
from service.running import RunOptions
from tests.conftest import MOOD_FILE, needs_models

pytestmark = needs_models


def test_background_run_can_be_cancelled_watched_and_resumed(tmp_path: Path) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=4, max_new_tokens=48)
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    store = Store(str(tmp_path / "jobs.db"))
    with store.session() as session:
        save_spec(session, None, load_experiment_file(path))
    assert status(store, "tinystories_mood").state == "never run"

    manager = RunManager()
    manager.start(store, "tinystories_mood", RunOptions(batch_size=4, device="cpu"))
    with pytest.raises(SteerLabError, match="already running"):
        manager.start(store, "tinystories_mood")
    other_tab = Store(str(tmp_path / "jobs.db"))
    deadline = time.monotonic() + 60
    while status(other_tab, "tinystories_mood").done < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    watched = status(other_tab, "tinystories_mood")
    assert watched.state == "running" and watched.total == 280 and watched.rate > 0
    assert cancel(other_tab, "tinystories_mood")
    manager.join("tinystories_mood", timeout=60)
    stopped = status(store, "tinystories_mood")
    assert stopped.state == "cancelled" and 8 <= stopped.done < 280

    manager.start(store, "tinystories_mood", RunOptions(batch_size=64, device="cpu"))
    manager.join("tinystories_mood", timeout=120)
    finished = status(store, "tinystories_mood")
    assert (finished.state, finished.done, finished.total) == ("done", 280, 280)
    assert manager.error("tinystories_mood") == ""
