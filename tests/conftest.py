"""Shared fixtures: the two real offline models, tiny random models, a fresh store."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The throwaway PostgreSQL server, started once for the session when a test first needs it.
from tests.postgres import postgres as postgres

# The example experiment served over HTTP, started once for all the serving tests.
from tests.serving import served as served

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
HF_CACHE = SHARED / "hf-cache" / "hub"
STORIES260K = SHARED / "models" / "stories260k"
TINYSTORIES = "raincandy-u/TinyStories-656K"
MOOD_FILE = ROOT / "experiments" / "tinystories_mood.yaml"

if HF_CACHE.is_dir():
    os.environ.setdefault("HF_HUB_CACHE", str(HF_CACHE))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The session's models (TinyStories, stories260k, SmolLM2) stay cached together, so code under test
# that loads one of them by id reuses the fixture's copy instead of loading it again (default: 1 model).
os.environ.setdefault("STEERLAB_MODEL_CACHE_SIZE", "4")

# Streamlit's AppTest runs a page as the process's __main__ module and leaves it there. A
# process started later with the "spawn" method re-runs __main__ first, so it would run the
# dashboard (opening ./steerlab.db) before its own target. Every test starts from pytest's.
_PYTEST_MAIN = sys.modules["__main__"]


@pytest.fixture(autouse=True)
def _pytest_is_main() -> Iterator[None]:
    sys.modules["__main__"] = _PYTEST_MAIN
    yield
    sys.modules["__main__"] = _PYTEST_MAIN


needs_models = pytest.mark.skipif(
    not (HF_CACHE.is_dir() and STORIES260K.is_dir()),
    reason="the offline models in ../shared are missing (clone with ../shared beside the project)",
)


@pytest.fixture(scope="session")
def tiny():
    """raincandy-u/TinyStories-656K: Llama, 2 layers, hidden 128."""
    if not HF_CACHE.is_dir():
        pytest.skip("../shared/hf-cache is missing")
    from engine.models import load_model

    return load_model(TINYSTORIES, device="cpu")


@pytest.fixture(scope="session")
def stories260k():
    """../shared/models/stories260k: Llama, 5 layers, hidden 64."""
    if not STORIES260K.is_dir():
        pytest.skip("../shared/models/stories260k is missing")
    from engine.models import load_model

    return load_model(str(STORIES260K), device="cpu")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Store tests (marked both_stores) run once on SQLite and once on the session's PostgreSQL server.
    if "store_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: which database the ``store`` fixture opens."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def store(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh store: a SQLite file, or (both_stores tests) a new database on the throwaway PostgreSQL server."""
    from db.store import Store

    if store_backend == "postgresql":
        server = request.getfixturevalue("postgres")
        url = server.new_store_url()
        s = Store(url)
        yield s
        s.close()
        server.drop(url)
        return
    s = Store(str(tmp_path / "test.db"))
    yield s
    s.close()


SMOLLM2_DIR = SHARED / "models" / "smollm2-135m-instruct"
SMOLLM2 = str(SMOLLM2_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from its GGUF file: Llama, 30 layers, hidden 576, ChatML template.

    Loading dequantises every tensor (seconds to tens of seconds on 2 cores), so it is loaded once per session.
    """
    if not Path(SMOLLM2).is_file():
        pytest.skip("../shared/models/smollm2-135m-instruct is missing")
    from engine.models import load_model

    return load_model(SMOLLM2, device="cpu")
