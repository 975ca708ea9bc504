"""Activation addition: ``h + coefficient * v[layer]`` on the positions of a token scope.

The steering method of CAA and ActAdd. The vector comes from the experiment's vectors
(extracted from contrastive pairs or loaded from a file); a coefficient of 0 is the
plain model, and a negative one steers the other way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from engine.fields import Where, as_choice, as_coefficient, as_int_list, as_str, check_keys, required
from engine.methods.base import (
    SCOPES,
    FieldInfo,
    PositionMasks,
    PreparedEdit,
    VectorLayersMethod,
    scaled_deltas,
    vector_for,
)
from engine.models import LoadedModel
from engine.vectors import SteeringVector


@dataclass(frozen=True)
class AddVector(VectorLayersMethod):
    name = "add"
    title = "Vector addition"
    summary = "Add a steering vector, times a coefficient, to the hidden states at the chosen layers."
    fields = (
        FieldInfo("vector", "vector", help="Which of the experiment's vectors to add."),
        FieldInfo("layers", "layers", default=[0], help="Decoder layers whose output is edited."),
        FieldInfo("coefficient", "float", default=4.0, help="Strength; negative steers the other way."),
        FieldInfo("scope", "choice", default="all", choices=SCOPES, help="Which tokens are steered."),
    )

    vector: str
    layer_list: tuple[int, ...]
    coefficient: float
    scope: str = "all"

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> AddVector:
        check_keys(raw, ("vector", "layers", "coefficient", "scope"), where)
        return cls(
            vector=as_str(required(raw, "vector", where), where.child("vector")),
            layer_list=as_int_list(required(raw, "layers", where), where.child("layers")),
            coefficient=as_coefficient(required(raw, "coefficient", where), where.child("coefficient")),
            scope=as_choice(raw.get("scope", "all"), SCOPES, where.child("scope")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "vector": self.vector,
            "layers": list(self.layer_list),
            "coefficient": self.coefficient,
            "scope": self.scope,
        }

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        deltas = scaled_deltas(vector_for(vectors, self.vector), self.layer_list, self.coefficient, model)
        return _Addition(self.layer_list, deltas, self.scope)


class _Addition(PreparedEdit):
    def __init__(self, layers: tuple[int, ...], deltas: dict[int, torch.Tensor], scope: str) -> None:
        self.layers = layers
        self._deltas = deltas
        self._scope = scope

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        return hidden + masks.scoped(self._scope, hidden.dtype) * self._deltas[layer]

    @property
    def parameter_count(self) -> int:
        return sum(int(d.numel()) for d in self._deltas.values())
