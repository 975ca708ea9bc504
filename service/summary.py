"""Per-variant summaries: compute, reversibility and scores with 95% intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from db import repository as repo
from db.store import Store
from engine.stats import Estimate, bootstrap_mean
from service.catalog import get_experiment, stored_spec
from service.scoring import FLUENCY


@dataclass(frozen=True)
class VariantSummary:
    name: str
    kind: str
    generations: int
    tokens: int
    seconds: float
    peak_memory_bytes: int
    figures: dict[str, float]
    scores: dict[str, Estimate] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.generations if self.generations else math.nan

    def compute(self) -> dict[str, float]:
        return {
            "generations": self.generations,
            "tokens": self.tokens,
            "wall_seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "peak_memory_bytes": self.peak_memory_bytes,
            "steering_parameters": self.figures.get("steering_parameters", math.nan),
            "layers_touched": self.figures.get("layers_touched", math.nan),
            "extraction_seconds": self.figures.get("extraction_seconds", math.nan),
            "prompt_tokens_mean": self.figures.get("prompt_tokens_mean", math.nan),
            "side_effect_kl": self.figures.get("side_effect_kl", math.nan),
            "nudge_ms_per_row": self.figures.get("nudge_ms_per_row", 0.0),
            "nudge_forward_backward_passes": self.figures.get("nudge_forward_backward_passes", 0.0),
        }

    def reversibility(self) -> dict[str, float]:
        return {
            "max_abs_logit_diff_after_removal": self.figures.get("reversibility_max_abs_logit_diff", math.nan),
            "probe_max_abs_logit_shift": self.figures.get("probe_max_abs_logit_shift", math.nan),
            "toggle_ms": self.figures.get("toggle_ms", math.nan),
        }


def variant_summaries(store: Store, name: str, bootstrap_rounds: int = 1000) -> list[VariantSummary]:
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        compute = repo.variant_compute(session, experiment.id)
        figures = repo.variant_metrics(session, experiment.id)
        scores = repo.generation_metrics(session, experiment.id)
        generations = repo.generations_of(session, experiment.id)
        out = []
        for variant in experiment.variants:
            c = compute.get(variant.id, repo.VariantCompute(variant.id, 0, 0, 0.0, 0))
            mine = [g for g in generations if g.variant_id == variant.id]
            estimates = {}
            for metric in [s.name for s in spec.scorers] + [FLUENCY]:
                scored = [(scores[g.id][metric], g.prompt_id) for g in mine if metric in scores.get(g.id, {})]
                if metric == FLUENCY and not scored:
                    continue
                estimates[metric] = bootstrap_mean(
                    [v for v, _ in scored], clusters=[p for _, p in scored], rounds=bootstrap_rounds
                )
            out.append(
                VariantSummary(
                    variant.name,
                    variant.kind,
                    c.generations,
                    c.tokens,
                    c.seconds,
                    c.peak_memory_bytes,
                    figures.get(variant.id, {}),
                    estimates,
                )
            )
        return out


def generation_counts(store: Store, name: str) -> dict[str, int]:
    """Stored generations per variant name."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        compute = repo.variant_compute(session, experiment.id)
        return {v.name: compute[v.id].generations if v.id in compute else 0 for v in experiment.variants}
