"""Layer and strength discovery: a grid of (layer, coefficient) cells for one vector.

A sweep is declared in an experiment file's ``sweep`` section and runs as an experiment
of its own (the baseline plus one ``add`` variant per cell), so it is batched, stored and
resumable like any run. Each cell is then scored on behaviour (a scorer of the
experiment) and fluency (perplexity under the unsteered model); the Pareto front and a
recommended cell come from those two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine.fields import Where
from engine.methods.add import AddVector
from engine.spec import ExperimentSpec, VariantSpec
from engine.sweep_config import SWEEP_KEYS, SweepConfig, parse_sweep

__all__ = [
    "SWEEP_KEYS",
    "Cell",
    "SweepConfig",
    "cell_name",
    "pareto_front",
    "parse_cell_name",
    "parse_sweep",
    "recommend",
    "sweep_experiment",
]


def cell_name(layer: int, coefficient: float) -> str:
    return f"L{layer}_x{coefficient:g}"


def sweep_experiment(source: ExperimentSpec, config: SweepConfig, n_layers: int, where: Where) -> ExperimentSpec:
    """The experiment that runs the grid: the baseline plus one cell per (layer, coefficient)."""
    layers = config.layers if config.layers is not None else tuple(range(n_layers))
    for i, layer in enumerate(layers):
        if not 0 <= layer < n_layers:
            where.child("layers").child(i).fail(
                f"layer {layer} is out of range", f"use a layer from 0 to {n_layers - 1}"
            )
    cells = len(layers) * len(config.coefficients)
    if cells > config.max_cells:
        where.fail(
            f"the grid has {cells} cells ({len(layers)} layers x {len(config.coefficients)} coefficients), "
            f"above the limit of {config.max_cells} set by {where.name_of('max_cells')}",
            f"remove layers or coefficients, or raise {where.name_of('max_cells')}",
        )
    variants = [VariantSpec("baseline")] + [
        VariantSpec(cell_name(layer, c), interventions=(AddVector(config.vector, (layer,), c, "all"),))
        for layer in layers
        for c in config.coefficients
    ]
    scorers = tuple(s for s in source.scorers if s.name == config.scorer)
    return replace(
        source,
        name=f"{source.name}__sweep",
        description=f"Sweep of vector '{config.vector}' over layers {list(layers)} and coefficients {list(config.coefficients)}.",
        vectors=tuple(v for v in source.vectors if v.name == config.vector),
        scorers=scorers,
        variants=tuple(variants),
        statistics=source.statistics.for_scores({s.name for s in scorers}),
    )


@dataclass(frozen=True)
class Cell:
    layer: int
    coefficient: float
    behaviour: float
    behaviour_low: float
    behaviour_high: float
    perplexity: float
    n: int

    @property
    def name(self) -> str:
        return cell_name(self.layer, self.coefficient)


def pareto_front(cells: Sequence[Cell]) -> list[Cell]:
    """Cells no other cell beats on both behaviour (higher) and perplexity (lower)."""
    usable = [c for c in cells if math.isfinite(c.behaviour) and math.isfinite(c.perplexity)]
    front = [
        c
        for c in usable
        if not any(
            o.behaviour >= c.behaviour
            and o.perplexity <= c.perplexity
            and (o.behaviour, o.perplexity) != (c.behaviour, c.perplexity)
            for o in usable
        )
    ]
    return sorted(front, key=lambda c: c.perplexity)


def recommend(cells: Sequence[Cell], baseline_perplexity: float, tolerance: float) -> Cell | None:
    """The strongest behaviour among cells whose perplexity stays within ``tolerance`` x the baseline's."""
    fluent = [c for c in cells if math.isfinite(c.perplexity) and c.perplexity <= tolerance * baseline_perplexity]
    if fluent:
        return max(fluent, key=lambda c: c.behaviour)
    front = pareto_front(cells)
    return front[0] if front else None


def parse_cell_name(name: str) -> tuple[int, float] | None:
    if not name.startswith("L") or "_x" not in name:
        return None
    layer, _, coefficient = name[1:].partition("_x")
    try:
        return int(layer), float(coefficient)
    except ValueError:
        return None
