"""A served copy of the example experiment for the serving tests: stored, run greedily, and served.

``served`` (session scope, registered in conftest) stores ``experiments/tinystories_mood.yaml``
with two prompts, greedy decoding and short answers, runs it with ``steerlab run``'s code
(so every variant's text is stored), and serves it with ``steerlab serve``'s code on a free
port of 127.0.0.1 in a thread. The module imports nothing heavy: conftest imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from db.store import Store
    from service.serving.server import ServerThread

API_KEY = "serve-test-key"
ADMIN_KEY = "serve-admin-key"
EXPERIMENT = "tinystories_mood"
NEW_TOKENS = 12  # the stored run's max_new_tokens; requests ask for the same to compare texts


@dataclass
class Served:
    store: Store
    server: ServerThread
    prompts: tuple[str, ...]
    run_texts: dict[tuple[str, int], str]  # (variant, prompt index) -> the stored run's text

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def client(self, key: str = API_KEY, retries: int = 0) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=key, max_retries=retries, timeout=60)


@pytest.fixture(scope="session")
def served(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from dataclasses import replace

    from db.repository import generations_of
    from db.store import Store
    from engine.experiment_file import load_experiment_file
    from engine.spec import GenerationSpec
    from service.catalog import get_experiment
    from service.running import RunOptions, run_spec
    from service.serving.options import ServeOptions
    from service.serving.server import ServerThread, load_context
    from tests.conftest import MOOD_FILE

    spec = load_experiment_file(MOOD_FILE)
    decoding = replace(spec.generation.decoding, max_new_tokens=NEW_TOKENS, do_sample=False)
    # Two prompts, greedy and short, two neutral prompts for the run's side-effect figures: a quick run, every variant kept.
    generation = GenerationSpec(decoding, seed=7, samples_per_prompt=1)
    spec = replace(spec, prompts=spec.prompts[:2], generation=generation, neutral_prompts=spec.neutral_prompts[:2])
    store = Store(str(Path(tmp_path_factory.mktemp("serve")) / "serve.db"))
    run_spec(store, spec, str(MOOD_FILE), RunOptions(device="cpu"))
    with store.session() as session:
        experiment = get_experiment(session, EXPERIMENT)
        names = {v.id: v.name for v in experiment.variants}
        indexes = {p.id: i for i, p in enumerate(experiment.prompts)}
        texts = {(names[g.variant_id], indexes[g.prompt_id]): g.text for g in generations_of(session, experiment.id)}
    options = ServeOptions((EXPERIMENT,), api_key=API_KEY, admin_key=ADMIN_KEY, max_coefficient=4.0, poll_seconds=0.05)
    context = load_context(store, options, tiny)
    with ServerThread(context) as server:
        yield Served(store, server, tuple(str(p) for p in spec.prompts), texts)
    store.close()


def stored_responses(store: Store) -> dict[str, Any]:
    """Every stored served response by its id."""
    from sqlalchemy import select

    from db.schema import ServedResponseRecord

    with store.session() as session:
        rows = session.scalars(select(ServedResponseRecord)).all()
        session.expunge_all()
    return {r.response_id: r for r in rows}
