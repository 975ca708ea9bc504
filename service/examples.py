"""The example experiments the dashboard offers: experiment files shipped in ``experiments/``.

Each is read as the command line reads it (its paths, the model's included, resolve as
for ``steerlab run``), so the dashboard's example is exactly the file's experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from db.store import Store
from engine.errors import SteerLabError
from engine.spec import ExperimentSpec
from service.access import LOCAL, Identity
from service.editing import create_experiment_from_file

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


@dataclass(frozen=True)
class Example:
    name: str  # the experiment's name, which is also its file's stem
    title: str  # what the button says it is

    @property
    def path(self) -> Path:
        return EXPERIMENTS_DIR / f"{self.name}.yaml"


EXAMPLES = (
    Example("tinystories_mood", "story mood on TinyStories-656K, runs in seconds"),
    Example("smollm2_tone", "upbeat chat replies on SmolLM2-135M-Instruct, runs in minutes"),
)


def add_example(store: Store, name: str, who: Identity = LOCAL) -> ExperimentSpec:
    """Store the example experiment ``name`` (one of :data:`EXAMPLES`) for ``who``, who owns it."""
    example = next((e for e in EXAMPLES if e.name == name), None)
    if example is None:
        known = ", ".join(e.name for e in EXAMPLES)
        raise SteerLabError(f"There is no example named '{name}'; pick one of {known}.")
    return create_experiment_from_file(store, example.path, who)
