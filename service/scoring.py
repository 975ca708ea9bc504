"""Apply an experiment's scorers to its generations that have no score yet.

Only finite values are stored: an empty output's perplexity (NaN), or a scorer's NaN, leaves
that output without the metric, and summaries count the scored outputs only.
"""

from __future__ import annotations

import math

from db import repository as repo
from db.store import Store
from engine.models import LoadedModel
from engine.prompting import render_prompt
from engine.side_effects import perplexities
from engine.spec import VariantSpec
from service.catalog import get_experiment, stored_spec


def score_experiment(store: Store, name: str) -> int:
    """Score every unscored generation with every scorer; returns how many scores were added."""
    added = 0
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        positions = {p.id: p.position for p in experiment.prompts}
        for scorer in spec.scorers:
            generations = repo.unscored_generations(session, experiment.id, scorer.name)
            references = [spec.references[positions[g.prompt_id]] for g in generations] if spec.references else None
            values = scorer.score([g.text for g in generations], references)
            # A score that is not a number (a scorer given an empty output) is not stored: the
            # output stays unscored, and summaries count only the scored ones (their n says so).
            repo.set_generation_metrics(
                session,
                ((g.id, scorer.name, v) for g, v in zip(generations, values, strict=True) if math.isfinite(v)),
            )
            added += len(generations)
    return added


FLUENCY = "fluency_ppl"


def score_fluency(store: Store, name: str, model: LoadedModel) -> int:
    """Perplexity of every output not yet measured, under the unsteered model, given its plain prompt."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        generations = repo.unscored_generations(session, experiment.id, FLUENCY)
        if not generations:
            return 0
        plain = VariantSpec("plain")
        prompts = {p.id: render_prompt(model, p.text, plain, spec.chat_template) for p in experiment.prompts}
        continuations = [list(model.tokenizer(g.text, add_special_tokens=False).input_ids) for g in generations]
        values = perplexities(model, [prompts[g.prompt_id] for g in generations], continuations)
        repo.set_generation_metrics(
            session, ((g.id, FLUENCY, v) for g, v in zip(generations, values, strict=True) if math.isfinite(v))
        )
        return len(generations)
