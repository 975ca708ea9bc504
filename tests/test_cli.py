"""The command line as a user runs it: run, list, export, and from a fresh clone without network."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.offline import use_shared_hub_cache
from tests.conftest import HF_CACHE, MOOD_FILE, ROOT, TINYSTORIES, needs_models


@needs_models
def test_run_list_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=12)
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    db = str(tmp_path / "cli.db")

    assert main(["run", str(path), "--db", db, "--batch-size", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "run 1 done, 90 new generations" in out
    for variant in ("baseline", "sad_x2", "prompt_sad"):
        assert variant in out
    assert "sad_words (mean [95% CI])" in out

    assert main(["list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "tinystories_mood" in listing and "90" in listing and "done" in listing

    assert main(["export", "tinystories_mood", "--format", "json", "-o", str(tmp_path / "e.json"), "--db", db]) == 0
    exported = json.loads((tmp_path / "e.json").read_text())
    assert {"experiment", "prompts", "variants", "generations", "ratings"} <= set(exported)
    assert len(exported["generations"]) == 90 and len(exported["prompts"]) == 10
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
    assert len(rows) == 90 and {"variant", "prompt", "sample", "text", "sad_words", "wins"} <= set(rows[0])


def test_module_entry_point_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "run" in done.stdout and "bench" in done.stdout


# Every variable that points huggingface_hub or transformers at a cache, or switches downloads off.
HF_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def tiny_file(folder: Path) -> Path:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["prompts"] = data["prompts"][:1]
    data["variants"] = [v for v in data["variants"] if v["name"] in ("baseline", "sad_x2")]
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def engine_command(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m engine ARGS`` as a user starts it: no HF_* variables unless given, project on the path."""
    clean = {k: v for k, v in os.environ.items() if k not in HF_VARIABLES}
    clean.update(PYTHONPATH=str(ROOT), **env)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=300
    )
    return done, time.monotonic() - start


@needs_models
def test_fresh_clone_finds_the_shared_cache_by_itself(tmp_path: Path) -> None:
    # The README's commands with none of the variables scripts/env.sh sets, from another folder.
    db = str(tmp_path / "fresh.db")
    done, _ = engine_command(["run", str(tiny_file(tmp_path)), "--db", db, "--device", "cpu"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run 1 done, 2 new generations" in done.stdout and "sad_x2" in done.stdout
    done, _ = engine_command(["list", "--db", db], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tinystories_mood" in done.stdout and "done" in done.stdout


@needs_models
def test_model_missing_offline_fails_at_once_naming_the_cache(tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    args = ["run", str(tiny_file(tmp_path)), "--db", str(tmp_path / "x.db"), "--device", "cpu"]
    done, seconds = engine_command(args, cwd=tmp_path, HF_HUB_CACHE=str(empty), HF_HUB_OFFLINE="1")
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in (
        f"'{TINYSTORIES}'",
        str(empty),
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE=1",
        "models--raincandy-u--TinyStories-656K",
    ):
        assert fragment in err
    assert seconds < 30, f"took {seconds:.0f} s: no download retries"
    assert "Retrying" not in done.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket is: connections are refused


@needs_models
def test_model_missing_and_hub_unreachable_fails_at_once(tmp_path: Path) -> None:
    # Downloads on, but the hub is a port where nothing listens: one short attempt, no retry loop.
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    args = ["run", str(tiny_file(tmp_path)), "--db", str(tmp_path / "x.db"), "--device", "cpu"]
    endpoint = f"http://127.0.0.1:{closed_port()}"
    done, seconds = engine_command(args, cwd=tmp_path, HF_HUB_CACHE=str(empty), HF_ENDPOINT=endpoint)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in (f"'{TINYSTORIES}'", str(empty), "could not be reached", "HF_HUB_CACHE=", "HF_HUB_OFFLINE=1"):
        assert fragment in err
    assert seconds < 30, f"took {seconds:.0f} s: no download retries"


def test_shared_cache_default_never_overrides_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.offline as entry

    monkeypatch.setattr(entry, "SHARED_HUB_CACHE", tmp_path)
    env: dict[str, str] = {}
    use_shared_hub_cache(env)
    assert env == {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}

    env = {"HF_HUB_OFFLINE": "0"}
    use_shared_hub_cache(env)
    assert env == {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "0"}

    for own in ({"HF_HUB_CACHE": "/mine"}, {"HF_HOME": "/mine"}, {"HUGGINGFACE_HUB_CACHE": "/mine"}):
        env = dict(own)
        use_shared_hub_cache(env)
        assert env == own, "a cache the user chose is kept, with their download setting"

    monkeypatch.setattr(entry, "SHARED_HUB_CACHE", tmp_path / "missing")
    env = {}
    use_shared_hub_cache(env)
    assert env == {}


def test_shared_cache_is_beside_the_clone() -> None:
    import service.offline as entry

    assert entry.SHARED_HUB_CACHE == HF_CACHE and entry.SHARED_HUB_CACHE.is_absolute()
