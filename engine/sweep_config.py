"""The ``sweep`` section of an experiment file: which vector, layers and coefficients to grid.

Kept apart from :mod:`engine.sweep` (which builds the sweep's experiment from an
:class:`engine.spec.ExperimentSpec`) so that :mod:`engine.spec` can validate the section
without importing the module that imports it: no import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.fields import (
    Where,
    as_coefficient,
    as_float,
    as_int,
    as_int_list,
    as_list,
    as_mapping,
    as_str,
    check_keys,
    required,
)

SWEEP_KEYS = ("vector", "layers", "coefficients", "scorer", "max_cells", "fluency_tolerance")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Definitions(Protocol):
    """What a sweep is checked against: the names of the experiment's vectors and scorers."""

    @property
    def vectors(self) -> Sequence[_Named]: ...

    @property
    def scorers(self) -> Sequence[_Named]: ...


@dataclass(frozen=True)
class SweepConfig:
    vector: str
    coefficients: tuple[float, ...]
    scorer: str
    layers: tuple[int, ...] | None = None  # None: every layer of the model
    max_cells: int = 64
    fluency_tolerance: float = 1.5  # recommended cells keep perplexity within this factor of the baseline's

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vector": self.vector,
            "coefficients": list(self.coefficients),
            "scorer": self.scorer,
            "max_cells": self.max_cells,
            "fluency_tolerance": self.fluency_tolerance,
        }
        if self.layers is not None:
            out["layers"] = list(self.layers)
        return out


def parse_sweep(raw: Any, where: Where, spec: Definitions) -> SweepConfig:
    data = as_mapping(raw, where)
    check_keys(data, SWEEP_KEYS, where)
    vector = as_str(required(data, "vector", where), where.child("vector"))
    if vector not in {v.name for v in spec.vectors}:
        where.child("vector").fail(
            f"names vector {vector!r}, which the experiment does not define", "define it under 'vectors'"
        )
    scorer = as_str(required(data, "scorer", where), where.child("scorer"))
    if scorer not in {s.name for s in spec.scorers}:
        known = ", ".join(s.name for s in spec.scorers) or "none are defined"
        where.child("scorer").fail(
            f"names scorer {scorer!r}, which the experiment does not define (defined: {known})",
            "add it under 'scorers'",
        )
    items = as_list(required(data, "coefficients", where), where.child("coefficients"))
    if not items:
        where.child("coefficients").fail("is an empty list", "list at least one coefficient")
    coefficients = tuple(as_coefficient(c, where.child("coefficients").child(i)) for i, c in enumerate(items))
    if len(set(coefficients)) != len(coefficients):
        where.child("coefficients").fail("repeats a coefficient", "list each coefficient once")
    layers = as_int_list(data["layers"], where.child("layers")) if "layers" in data else None
    return SweepConfig(
        vector=vector,
        coefficients=coefficients,
        scorer=scorer,
        layers=layers,
        max_cells=as_int(data.get("max_cells", 64), where.child("max_cells"), 1),
        fluency_tolerance=as_float(data.get("fluency_tolerance", 1.5), where.child("fluency_tolerance"), 1.0),
    )
