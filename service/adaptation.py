"""The adaptation comparison: steering against prompting, adapters and fine-tuning, all measured.

Per variant, the study's criteria: scope (layers touched / total), permanence (can it be
undone, and the measured logit difference after undoing it), compute (set-up time:
vector extraction or training; inference time per token against the baseline), memory
(extra parameters and bytes), data (examples used), task performance (a scorer, with its
95% interval) and the share of fine-tuning's gain, (method − baseline) / (fine-tune −
baseline), with a 95% interval from a paired bootstrap over prompts. Nothing is typed in:
every number comes from a stored run.

Inference time is a share of mixed batches' wall time, so it compares with the baseline's
only when both were generated in the same runs: a variant added later and run alone (on a
quieter or busier machine) gets ``speed_comparable=False``, and the decision helper does
not judge it on its inference time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from engine.stats import Estimate, MeanEstimate
from service.catalog import get_experiment, stored_spec
from service.summary import variant_summaries


@dataclass(frozen=True)
class MethodRow:
    variant: str
    kind: str
    layers_touched: int
    total_layers: int
    reversible: bool
    undo_logit_diff: float
    setup_seconds: float  # vector extraction, or training
    inference_overhead: float  # seconds per generated token, relative to the baseline
    extra_parameters: int
    extra_bytes: int
    examples: int
    performance: Estimate | MeanEstimate
    share_of_finetune_gain: Estimate | None
    # False when this variant's generations came from other runs than the baseline's: its
    # inference time was measured under other conditions and says nothing against the baseline's.
    speed_comparable: bool = True

    @property
    def scope(self) -> str:
        return "input only" if self.kind == "prompting" else f"{self.layers_touched}/{self.total_layers} layers"


@dataclass(frozen=True)
class Constraints:
    max_examples: int | None = None
    max_setup_seconds: float | None = None
    must_be_reversible: bool = False
    max_inference_overhead: float | None = None


def adaptation_table(
    store: Store, name: str, scorer: str | None = None, rounds: int = 1000, seed: int = 0
) -> list[MethodRow]:
    summaries = {s.name: s for s in variant_summaries(store, name, bootstrap_rounds=rounds)}
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        if not spec.scorers:
            raise SteerLabError(
                f"Experiment '{name}' has no scorers, so there is no task performance to compare; add one."
            )
        metric = scorer or spec.scorers[0].name
        if metric not in {s.name for s in spec.scorers}:
            raise SteerLabError(
                f"Experiment '{name}' has no scorer '{metric}'; pick one of {', '.join(s.name for s in spec.scorers)}."
            )
        scores = repo.generation_metrics(session, experiment.id)
        by_variant: dict[str, dict[int, list[float]]] = {}
        names = {v.id: v.name for v in experiment.variants}
        for generation_id, variant_id, prompt_id in repo.generation_index(session, experiment.id):  # no texts
            if metric in scores.get(generation_id, {}):
                by_variant.setdefault(names[variant_id], {}).setdefault(prompt_id, []).append(
                    scores[generation_id][metric]
                )
        total_layers = _layer_count(spec.model)
    baseline = next((v.name for v in spec.variants if v.kind == "baseline"), None)
    finetune = next((v.name for v in spec.variants if v.kind == "finetune"), None)
    base_speed = _seconds_per_token(summaries[baseline]) if baseline else math.nan
    rows = []
    for variant in spec.variants:
        s = summaries[variant.name]
        f = s.figures
        kind = variant.kind
        if kind in ("lora", "finetune"):
            extra_parameters = int(f.get("trainable_parameters", 0))
            extra_bytes = int(f.get("extra_parameter_bytes", 0))
            setup = f.get("training_seconds", math.nan)
            examples = int(f.get("training_examples", 0))
        else:
            extra_parameters = int(f.get("steering_parameters", 0))
            extra_bytes = extra_parameters * 4
            setup = f.get("extraction_seconds", 0.0)
            examples = sum(spec.vector(n).example_count for n in variant.vector_names())
        share = None
        if finetune and baseline and variant.name not in (baseline,):
            share = _share_of_gain(by_variant, variant.name, baseline, finetune, rounds, seed)
        rows.append(
            MethodRow(
                variant=variant.name,
                kind=kind,
                layers_touched=int(f.get("layers_touched", 0)) if kind != "baseline" else 0,
                total_layers=total_layers,
                # Fine-tuning can be undone only by restoring the kept copy of the original weights.
                reversible=kind != "finetune",
                undo_logit_diff=f.get("reversibility_max_abs_logit_diff", math.nan),
                setup_seconds=setup,
                inference_overhead=_seconds_per_token(s) / base_speed
                if base_speed and math.isfinite(base_speed)
                else math.nan,
                extra_parameters=extra_parameters,
                extra_bytes=extra_bytes,
                examples=examples,
                performance=s.scores.get(metric, Estimate(math.nan, math.nan, math.nan, 0)),
                share_of_finetune_gain=share,
                speed_comparable=s.timing_comparable,
            )
        )
    return rows


def decide(rows: list[MethodRow], constraints: Constraints) -> list[MethodRow]:
    """Measured methods that meet the constraints, best task performance first.

    Ranking is on task performance only. The inference-time budget is checked only where the
    time is comparable with the baseline's (same runs); a method whose time is not comparable
    is neither ruled out nor let in on it: it stays in the list, and :func:`unchecked_speed`
    names it so that a page can say its inference time was not judged.
    """
    fitting = [
        r
        for r in rows
        if r.kind != "baseline"
        and (constraints.max_examples is None or r.examples <= constraints.max_examples)
        and (constraints.max_setup_seconds is None or r.setup_seconds <= constraints.max_setup_seconds)
        and (not constraints.must_be_reversible or r.reversible)
        and (
            constraints.max_inference_overhead is None
            or not r.speed_comparable
            or r.inference_overhead <= constraints.max_inference_overhead
        )
    ]
    return sorted(fitting, key=lambda r: -r.performance.value if math.isfinite(r.performance.value) else math.inf)


def unchecked_speed(rows: list[MethodRow], constraints: Constraints) -> list[MethodRow]:
    """Rows whose inference time the budget could not be checked against (measured in other runs)."""
    if constraints.max_inference_overhead is None:
        return []
    return [r for r in rows if r.kind != "baseline" and not r.speed_comparable]


def _seconds_per_token(summary: object) -> float:
    tokens = getattr(summary, "tokens", 0)
    return getattr(summary, "seconds", 0.0) / tokens if tokens else math.nan


def _layer_count(model_id: str) -> int:
    from service.editing import model_facts

    return model_facts(model_id).n_layers


def _share_of_gain(
    by_variant: dict[str, dict[int, list[float]]], method: str, baseline: str, finetune: str, rounds: int, seed: int
) -> Estimate:
    prompts = sorted(
        set(by_variant.get(method, {})) & set(by_variant.get(baseline, {})) & set(by_variant.get(finetune, {}))
    )
    if not prompts:
        return Estimate(math.nan, math.nan, math.nan, 0)

    def share(chosen: list[int]) -> float:
        mean = {v: np.mean([x for p in chosen for x in by_variant[v][p]]) for v in (method, baseline, finetune)}
        gain = mean[finetune] - mean[baseline]
        return float((mean[method] - mean[baseline]) / gain) if gain != 0 else math.nan

    point = share(prompts)
    rng = np.random.default_rng(seed)
    draws = [share([prompts[i] for i in rng.integers(0, len(prompts), len(prompts))]) for _ in range(rounds)]
    finite = [d for d in draws if math.isfinite(d)]
    if not finite:
        return Estimate(point, math.nan, math.nan, len(prompts))
    low, high = np.percentile(finite, [2.5, 97.5])
    return Estimate(point, float(low), float(high), len(prompts))
