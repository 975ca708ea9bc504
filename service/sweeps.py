"""Sweeps: run a (layer x coefficient) grid as its own stored experiment, analyse it, promote cells."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from engine.fields import Where
from engine.methods.add import AddVector
from engine.runner import CancelFlag, Progress
from engine.spec import ExperimentSpec, VariantSpec
from engine.sweep import Cell, SweepConfig, pareto_front, parse_cell_name, parse_sweep, recommend, sweep_experiment
from service.access import LOCAL, Identity
from service.catalog import import_experiment, load_spec, stored_spec
from service.editing import model_facts, save_variant
from service.jobs import enqueue
from service.provenance import scorer_hash
from service.ray_cluster import RayPlan
from service.running import RunOptions, RunResult, run_spec
from service.scoring import FLUENCY
from service.staleness import stale_figures
from service.summary import variant_summaries

SWEEP_SUFFIX = "__sweep"  # engine.sweep names a sweep's experiment after its source with this suffix


@dataclass(frozen=True)
class SweepResult:
    experiment: str
    config: SweepConfig
    cells: list[Cell]
    baseline_behaviour: float
    baseline_perplexity: float
    front: list[Cell]
    recommended: Cell | None
    # One sentence per group of figures the results rest on that no longer follow the
    # definitions (the sweep's own stale scores, or a source scorer changed since the sweep).
    stale: tuple[str, ...] = ()


def config_of(spec: ExperimentSpec, source: str) -> SweepConfig:
    if spec.sweep is None:
        raise SteerLabError(f"{source} has no 'sweep' section; add one with vector, coefficients and scorer.")
    return parse_sweep(spec.sweep, Where(source, "sweep"), spec)


def plan_sweep(spec: ExperimentSpec, config: SweepConfig, where: Where) -> ExperimentSpec:
    """The sweep's experiment spec, checked against the model's layer count and the grid limit."""
    facts = model_facts(spec.model)
    return replace(sweep_experiment(spec, config, facts.n_layers, where), sweep=config.to_dict())


def run_sweep_file(
    store: Store,
    path: str | Path,
    options: RunOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    ray: RayPlan | None = None,
) -> tuple[RunResult, SweepResult]:
    """Run the file's sweep (locally, or on the Ray cluster ``ray`` names) and analyse it."""
    options = options or RunOptions()
    spec = load_experiment_file(path, [Path(d) for d in options.allowed_dirs])
    if options.model:
        spec = replace(spec, model=options.model)
    config = config_of(spec, str(path))
    sweep = plan_sweep(spec, config, Where(str(path), "sweep"))
    to_run, run_options = _keep_stored_cells(store, sweep), replace(options, name=None)
    if ray is not None:
        from service.ray_runs import run_spec_on_ray

        result = run_spec_on_ray(store, to_run, str(path), run_options, ray, progress, cancel)
    else:
        result = run_spec(store, to_run, str(path), run_options, progress, cancel)
    return result, analyse(store, sweep.name)


def create_sweep(store: Store, experiment_name: str, raw_config: dict[str, Any]) -> str:
    """Store the sweep experiment for a stored experiment (the dashboard's form); returns its name."""
    spec = load_spec(store, experiment_name)
    form = Where.form(f"The sweep form of '{experiment_name}'", SWEEP_FORM_LABELS)
    config = parse_sweep(raw_config, form, spec)
    sweep = _keep_stored_cells(store, plan_sweep(spec, config, form))
    with store.session() as session:
        # A grid whose model, prompts or decoding changed makes the stored cells stale: replace them.
        import_experiment(session, sweep, f"sweep of '{experiment_name}'", {}, replace_existing=True)
    return sweep.name


# The Sweep page's labels for the fields it names differently.
SWEEP_FORM_LABELS = {
    "max_cells": "Largest grid allowed (cells)",
    "coefficients": "Coefficients",
    "layers": "Layers",
    "scorer": "Behaviour scorer",
    "vector": "Vector",
}


def start_sweep(
    store: Store, experiment_name: str, raw_config: dict[str, Any], batch_size: int = 32, who: Identity = LOCAL
) -> str:
    """Store the sweep experiment and queue its run for a worker; returns the sweep's name."""
    name = create_sweep(store, experiment_name, raw_config)
    enqueue(store, name, RunOptions(batch_size=batch_size), who)
    return name


def _keep_stored_cells(store: Store, sweep: ExperimentSpec) -> ExperimentSpec:
    """A re-run with a changed grid keeps the cells already stored (their outputs stay valid)."""
    with store.session() as session:
        existing = repo.find_experiment(session, sweep.name)
        if existing is None:
            return sweep
        stored = stored_spec(existing)
    if stored.generation != sweep.generation or stored.prompts != sweep.prompts or stored.model != sweep.model:
        return sweep
    names = {v.name for v in sweep.variants}
    kept = [v for v in stored.variants if v.name not in names and parse_cell_name(v.name) is not None]
    return replace(sweep, variants=sweep.variants + tuple(kept))


def analyse(store: Store, sweep_name: str) -> SweepResult:
    spec = load_spec(store, sweep_name)
    config = config_of(spec, f"sweep '{sweep_name}'")
    summaries = {s.name: s for s in variant_summaries(store, sweep_name)}
    cells = []
    for name, summary in summaries.items():
        parsed = parse_cell_name(name)
        if parsed is None or config.scorer not in summary.scores:
            continue
        behaviour = summary.scores[config.scorer]
        fluency = summary.scores.get(FLUENCY)
        cells.append(
            Cell(
                parsed[0],
                parsed[1],
                behaviour.value,
                behaviour.low,
                behaviour.high,
                fluency.value if fluency else math.nan,
                behaviour.n,
            )
        )
    baseline = summaries.get("baseline")
    base_behaviour = baseline.scores[config.scorer].value if baseline and config.scorer in baseline.scores else math.nan
    base_ppl = baseline.scores[FLUENCY].value if baseline and FLUENCY in baseline.scores else math.nan
    cells = [c for c in cells if c.n > 0]
    return SweepResult(
        sweep_name,
        config,
        cells,
        base_behaviour,
        base_ppl,
        pareto_front(cells),
        recommend(cells, base_ppl, config.fluency_tolerance) if math.isfinite(base_ppl) else None,
        tuple(str(f) for f in stale_figures(store, sweep_name)) + _source_drift(store, spec, config),
    )


def _source_drift(store: Store, sweep: ExperimentSpec, config: SweepConfig) -> tuple[str, ...]:
    """A sentence if the experiment the sweep came from now defines the sweep's scorer differently."""
    source_name = sweep.name.removesuffix(SWEEP_SUFFIX)
    with store.session() as session:
        source = repo.find_experiment(session, source_name)
        if source is None or sweep.name == source_name:
            return ()
        source_spec = stored_spec(source)
    mine = next((s for s in sweep.scorers if s.name == config.scorer), None)
    theirs = next((s for s in source_spec.scorers if s.name == config.scorer), None)
    if mine is None or theirs is None or scorer_hash(sweep, mine) == scorer_hash(source_spec, theirs):
        return ()
    return (
        f"Experiment '{source_name}' has changed scorer '{config.scorer}' since this sweep was stored; "
        "run the sweep again to score its cells with the new definition.",
    )


def promote_cells(store: Store, experiment_name: str, sweep_name: str, cell_names: list[str]) -> list[str]:
    """Add chosen cells to the source experiment as steering variants; returns their names."""
    config = config_of(load_spec(store, sweep_name), f"sweep '{sweep_name}'")
    added = []
    for cell in cell_names:
        parsed = parse_cell_name(cell)
        if parsed is None:
            raise SteerLabError(f"'{cell}' is not a sweep cell name like L1_x2; pick cells from the sweep's results.")
        variant = VariantSpec(
            f"{config.vector}_{cell}", interventions=(AddVector(config.vector, (parsed[0],), parsed[1], "all"),)
        )
        save_variant(store, experiment_name, variant.to_dict())
        added.append(variant.name)
    return added
