"""Per-variant figures measured after generating: reversibility, side effects, compute, training.

Each variant's figures are stored with the hash of what they were measured from
(:func:`service.provenance.variant_figures_hash`); a variant whose stored figures carry
today's hash is not measured again, one whose definition, vectors, training texts or probe
and neutral prompts changed (or whose figures predate hashes) is.
"""

from __future__ import annotations

import logging
import math

from db import figures as stored_figures
from db.schema import Experiment
from db.store import Store
from engine.measure import measure_reversibility
from engine.models import LoadedModel
from engine.prompting import plain_tokens, render_prompt
from engine.runner import PreparedVariant
from engine.side_effects import next_token_kl
from engine.spec import ExperimentSpec, VariantSpec
from engine.training import AdaptedModel
from engine.vectors import SteeringVector
from service.baselines import training_figures
from service.provenance import variant_figures_hash

log = logging.getLogger(__name__)


def store_variant_figures(
    store: Store,
    experiment_id: int,
    run_id: int,
    spec: ExperimentSpec,
    model: LoadedModel,
    variants: list[PreparedVariant],
    vectors: dict[str, SteeringVector],
    adapted: dict[str, AdaptedModel],
) -> None:
    """Reversibility, side effects and compute figures of every variant whose figures are stale or missing."""
    probe = plain_tokens(model, spec.probe_prompt)
    plain_variant = VariantSpec("plain")
    neutral_plain = [render_prompt(model, p, plain_variant, spec.chat_template) for p in spec.neutral_prompts]
    with store.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        sources = stored_figures.variant_figure_sources(session, experiment_id)
        for row, variant_spec, prepared in zip(experiment.variants, spec.variants, variants, strict=True):
            source = variant_figures_hash(spec, variant_spec)
            if sources.get(row.id) == {source}:
                continue  # measured from exactly this definition already
            log.info("Measuring the figures of variant '%s' of '%s'", variant_spec.name, experiment.name)
            costs: dict[str, float] = {}  # read before the probes below add their own passes
            for edit in prepared.edits:
                for key, value in edit.cost().items():
                    if key != "seconds":
                        costs[key] = costs.get(key, 0.0) + value
            neutral = [render_prompt(model, p, variant_spec, spec.chat_template) for p in spec.neutral_prompts]
            kl = next_token_kl(model, prepared.edits, neutral, neutral_plain, prepared.model)
            if variant_spec.name in adapted:
                values = {**training_figures(adapted[variant_spec.name], model, probe), "side_effect_kl": kl}
            else:
                figures = measure_reversibility(model, prepared.edits, probe)
                used = variant_spec.vector_names()
                values = {
                    "reversibility_max_abs_logit_diff": figures.max_abs_logit_diff,
                    "probe_max_abs_logit_shift": figures.steered_max_abs_logit_diff,
                    "toggle_ms": figures.toggle_ms,
                    "steering_parameters": float(sum(e.parameter_count for e in prepared.edits)),
                    "layers_touched": float(len({layer for e in prepared.edits for layer in e.layers})),
                    "extraction_seconds": float(sum(vectors[n].extraction_seconds for n in used)),
                    "prompt_tokens_mean": sum(len(t) for t in prepared.prompt_tokens) / len(prepared.prompt_tokens),
                    "side_effect_kl": kl,
                    **costs,
                }
            stored_figures.replace_variant_figures(session, row.id, run_id, source, finite(values))


def finite(values: dict[str, float]) -> dict[str, float]:
    """The figures that are numbers: an absurd coefficient makes some inf/NaN, which are left out
    (pages show a missing figure as missing), so the store never holds NaN."""
    return {k: v for k, v in values.items() if math.isfinite(v)}
