"""Activation addition: ``h + coefficient * v[layer]`` on the positions of a token scope.

The steering method of CAA and ActAdd. The vector comes from the experiment's vectors
(extracted from contrastive pairs or loaded from a file); a coefficient of 0 is the
plain model, and a negative one steers the other way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from engine.declaration import COEFFICIENT, LAYERS, VECTOR, Settings, choice
from engine.methods.base import (
    SCOPES,
    PositionMasks,
    PreparedEdit,
    VectorLayersMethod,
    scaled_deltas,
    vector_for,
)

if TYPE_CHECKING:  # annotations only: importing a method must not load torch (see engine.methods.base)
    import torch

    from engine.models import LoadedModel
    from engine.vectors import SteeringVector


class AddSettings(Settings):
    vector: Annotated[str, VECTOR] = Field(description="Which of the experiment's vectors to add.")
    layers: Annotated[tuple[int, ...], LAYERS] = Field(
        description="Decoder layers whose output is edited.", examples=[[0]]
    )
    coefficient: Annotated[float, COEFFICIENT] = Field(
        description="Strength; negative steers the other way.", examples=[4.0]
    )
    scope: Annotated[str, choice(SCOPES)] = Field("all", description="Which tokens are steered.")


@dataclass(frozen=True)
class AddVector(VectorLayersMethod):
    name = "add"
    title = "Vector addition"
    summary = "Add a steering vector, times a coefficient, to the hidden states at the chosen layers."
    settings = AddSettings

    vector: str
    layer_list: tuple[int, ...]
    coefficient: float
    scope: str = "all"

    @classmethod
    def from_settings(cls, settings: AddSettings) -> AddVector:
        return cls(settings.vector, settings.layers, settings.coefficient, settings.scope)

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

    def additive(self, layer: int) -> tuple[torch.Tensor, str]:
        return self._deltas[layer], self._scope

    @property
    def parameter_count(self) -> int:
        return sum(int(d.numel()) for d in self._deltas.values())
