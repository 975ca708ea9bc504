"""Apply an experiment's scorers to its generations: those unscored, and those scored stale.

Every score records the hash of what it was computed from (:mod:`service.provenance`); a
score whose scorer, references or model changed since (or stored before hashes existed) is
dropped and computed again here, so the stored means always follow the current definition.

Only finite values are stored: an empty output's perplexity (NaN), or a scorer's NaN, leaves
that output without the metric, and summaries count the scored outputs only.
"""

from __future__ import annotations

import logging
import math

from db import figures
from db import repository as repo
from db.store import Store
from engine.models import LoadedModel
from engine.prompting import render_prompt
from engine.side_effects import perplexities
from engine.spec import VariantSpec
from service.catalog import get_experiment, stored_spec
from service.provenance import FLUENCY, fluency_hash, scorer_hash

log = logging.getLogger(__name__)

__all__ = ["FLUENCY", "score_experiment", "score_fluency"]


def score_experiment(store: Store, name: str) -> int:
    """Score every generation lacking a current score with every scorer; returns how many were scored."""
    added = 0
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        positions = {p.id: p.position for p in experiment.prompts}
        for scorer in spec.scorers:
            source = scorer_hash(spec, scorer)
            dropped = figures.drop_stale_generation_metrics(session, experiment.id, scorer.name, source)
            if dropped:
                log.info("Experiment '%s': %d stale '%s' scores are computed again", name, dropped, scorer.name)
            generations = repo.unscored_generations(session, experiment.id, scorer.name)
            if not generations:
                continue
            references = [spec.references[positions[g.prompt_id]] for g in generations] if spec.references else None
            values = scorer.score([g.text for g in generations], references)
            # A score that is not a number (a scorer given an empty output) is not stored: the
            # output stays unscored, and summaries count only the scored ones (their n says so).
            figures.set_generation_scores(
                session,
                scorer.name,
                source,
                ((g.id, v) for g, v in zip(generations, values, strict=True) if math.isfinite(v)),
            )
            added += len(generations)
    return added


def score_fluency(store: Store, name: str, model: LoadedModel) -> int:
    """Perplexity of every output not measured under the current model, given its plain prompt."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        source = fluency_hash(spec)
        figures.drop_stale_generation_metrics(session, experiment.id, FLUENCY, source)
        generations = repo.unscored_generations(session, experiment.id, FLUENCY)
        if not generations:
            return 0
        plain = VariantSpec("plain")
        # From the definition, not the row's text: a conversation's row holds only its transcript.
        prompts = {
            p.id: render_prompt(model, spec.prompts[p.position], plain, spec.chat_template) for p in experiment.prompts
        }
        continuations = [list(model.tokenizer(g.text, add_special_tokens=False).input_ids) for g in generations]
        values = perplexities(model, [prompts[g.prompt_id] for g in generations], continuations)
        figures.set_generation_scores(
            session, FLUENCY, source, ((g.id, v) for g, v in zip(generations, values, strict=True) if math.isfinite(v))
        )
        return len(generations)
