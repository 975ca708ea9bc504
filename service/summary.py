"""Per-variant summaries: compute, reversibility and scores with 95% intervals.

Timing figures (seconds, tokens per second, peak memory) are shares of mixed batches, so
they compare variants only when measured in the same runs: a variant added later and run
alone, on a quieter (or busier) machine, is not comparable with the baseline. Each summary
keeps the runs its generations came from and whether those were the baseline's runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import Generation
from db.store import Store
from engine.stats import MeanEstimate, prompt_mean
from service import cache
from service.catalog import get_experiment, stored_spec
from service.provenance import FLUENCY


@dataclass(frozen=True)
class VariantSummary:
    name: str
    kind: str
    generations: int
    tokens: int
    seconds: float
    peak_memory_bytes: int
    figures: dict[str, float]
    scores: dict[str, MeanEstimate] = field(default_factory=dict)  # over prompts, with generations counted
    # The runs that produced this variant's generations (None: a run since deleted).
    run_ids: frozenset[int | None] = frozenset()
    # Whether every one of those runs also produced baseline generations, i.e. the timings were
    # measured in the same mixed batches' runs as the baseline's. None: no baseline, or nothing
    # generated yet, so there is nothing to compare with.
    same_runs_as_baseline: bool | None = None

    @property
    def timing_comparable(self) -> bool:
        """False only when the timings are known to come from other runs than the baseline's."""
        return self.same_runs_as_baseline is not False

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
    """Per-variant figures with 95% intervals; recomputed only when the experiment's data changed."""
    with store.session() as session:
        version = repo.data_version(session, get_experiment(session, name).id)
    return cache.cached(
        (store.url, "summaries", name, bootstrap_rounds),
        version,
        lambda: _variant_summaries(store, name, bootstrap_rounds),
    )


def _variant_summaries(store: Store, name: str, bootstrap_rounds: int) -> list[VariantSummary]:
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        compute = repo.variant_compute(session, experiment.id)
        figures = repo.variant_metrics(session, experiment.id)
        scores = repo.generation_metrics(session, experiment.id)
        by_variant: dict[int, list[tuple[int, int]]] = {}  # variant id -> (generation id, prompt id)
        for generation_id, variant_id, prompt_id in repo.generation_index(session, experiment.id):
            by_variant.setdefault(variant_id, []).append((generation_id, prompt_id))
        runs = _run_ids(session, experiment.id)
        baseline = next((v for v in experiment.variants if v.kind == "baseline"), None)
        baseline_runs = runs.get(baseline.id, frozenset()) if baseline is not None else frozenset()
        out = []
        for variant in experiment.variants:
            c = compute.get(variant.id, repo.VariantCompute(variant.id, 0, 0, 0.0, 0))
            mine = by_variant.get(variant.id, [])
            estimates = {}
            for metric in [s.name for s in spec.scorers] + [FLUENCY]:
                scored = [(scores[g][metric], p) for g, p in mine if metric in scores.get(g, {})]
                if metric == FLUENCY and not scored:
                    continue
                # A t-interval over per-prompt means (skewness-corrected): generations of one prompt
                # are not independent, and a bootstrap over 10 prompts covers 75-90%, not 95%
                # (tests/test_stats_coverage.py).
                estimates[metric] = prompt_mean([v for v, _ in scored], [p for _, p in scored])
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
                    runs.get(variant.id, frozenset()),
                    _same_runs(runs.get(variant.id, frozenset()), baseline_runs),
                )
            )
        return out


def _same_runs(mine: frozenset[int | None], baseline: frozenset[int | None]) -> bool | None:
    if not mine or not baseline:
        return None
    if mine == baseline:
        return True
    # A generation whose run was deleted (None) cannot be placed: it is not the baseline's run.
    return None not in mine and mine <= baseline


def _run_ids(session: Session, experiment_id: int) -> dict[int, frozenset[int | None]]:
    """Per variant id, the runs that produced its stored generations."""
    rows = session.execute(
        select(Generation.variant_id, Generation.run_id).where(Generation.experiment_id == experiment_id).distinct()
    )
    out: dict[int, set[int | None]] = {}
    for variant_id, run_id in rows:
        out.setdefault(variant_id, set()).add(run_id)
    return {v: frozenset(r) for v, r in out.items()}


def generation_counts(store: Store, name: str) -> dict[str, int]:
    """Stored generations per variant name."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        compute = repo.variant_compute(session, experiment.id)
        return {v.name: compute[v.id].generations if v.id in compute else 0 for v in experiment.variants}
