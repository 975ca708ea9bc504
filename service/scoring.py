"""Apply an experiment's scorers to its generations that have no score yet."""

from __future__ import annotations

from db import repository as repo
from db.store import Store
from service.catalog import get_experiment, stored_spec


def score_experiment(store: Store, name: str) -> int:
    """Score every unscored generation with every scorer; returns how many scores were added."""
    added = 0
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        for scorer in spec.scorers:
            generations = repo.unscored_generations(session, experiment.id, scorer.name)
            values = scorer.score([g.text for g in generations])
            repo.set_generation_metrics(
                session, ((g.id, scorer.name, v) for g, v in zip(generations, values, strict=True))
            )
            added += len(generations)
    return added
