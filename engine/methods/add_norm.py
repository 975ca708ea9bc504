"""Norm-preserving addition: add ``coefficient * v`` then rescale each position to its old length.

Changes the direction of the residual stream without inflating it, which keeps later
layers' normalisation in the range they were trained on (a gentler edit at high strength).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from engine.fields import Where, as_float, check_keys, required
from engine.methods.base import (
    SCOPE_FIELD,
    VECTOR_LAYERS_SCOPE_FIELDS,
    FieldInfo,
    PositionMasks,
    PreparedEdit,
    SteeringMethod,
    read_vector_layers_scope,
    vector_for,
)
from engine.models import LoadedModel
from engine.vectors import SteeringVector


@dataclass(frozen=True)
class AddNormPreserving(SteeringMethod):
    name = "add_norm"
    title = "Norm-preserving addition"
    summary = "Add the vector times a coefficient, then rescale each hidden state to its original length."
    fields = (
        *VECTOR_LAYERS_SCOPE_FIELDS,
        FieldInfo("coefficient", "float", default=4.0, help="Strength; negative steers the other way."),
        SCOPE_FIELD,
    )

    vector: str
    layer_list: tuple[int, ...]
    scope: str
    coefficient: float

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> AddNormPreserving:
        check_keys(raw, ("vector", "layers", "coefficient", "scope"), where)
        vector, layers, scope = read_vector_layers_scope(raw, where)
        return cls(vector, layers, scope, as_float(required(raw, "coefficient", where), where.child("coefficient")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "vector": self.vector,
            "layers": list(self.layer_list),
            "coefficient": self.coefficient,
            "scope": self.scope,
        }

    @property
    def layers(self) -> tuple[int, ...]:
        return self.layer_list

    def vector_names(self) -> tuple[str, ...]:
        return (self.vector,)

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        vector = vector_for(vectors, self.vector)
        deltas = {
            layer: (self.coefficient * vector.for_layer(layer)).to(model.device, model.dtype)
            for layer in self.layer_list
        }
        return _NormPreserving(self.layer_list, deltas, self.scope)


class _NormPreserving(PreparedEdit):
    def __init__(self, layers: tuple[int, ...], deltas: dict[int, torch.Tensor], scope: str) -> None:
        self.layers, self._deltas, self._scope = layers, deltas, scope

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        moved = hidden + self._deltas[layer]
        rescaled = moved * (hidden.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.where(masks.scope(self._scope).unsqueeze(-1), rescaled, hidden)

    @property
    def parameter_count(self) -> int:
        return sum(int(d.numel()) for d in self._deltas.values())
