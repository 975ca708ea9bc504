"""Directional ablation: project a direction out of the hidden states, ``h - (h·u) u``.

Removes whatever the model writes along the vector (for example a refusal or a mood
direction) instead of pushing along it; ``u`` is the vector's unit direction per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.methods.base import (
    PositionMasks,
    PreparedEdit,
    VectorLayersMethod,
    VectorLayersScope,
    unit_directions,
    vector_for,
)

if TYPE_CHECKING:  # annotations only: importing a method must not load torch (see engine.methods.base)
    import torch

    from engine.models import LoadedModel
    from engine.vectors import SteeringVector


@dataclass(frozen=True)
class Ablate(VectorLayersMethod):
    name = "ablate"
    title = "Directional ablation"
    summary = "Project the vector's direction out of the hidden states at the chosen layers."
    settings = VectorLayersScope

    vector: str
    layer_list: tuple[int, ...]
    scope: str = "all"

    @classmethod
    def from_settings(cls, settings: VectorLayersScope) -> Ablate:
        return cls(settings.vector, settings.layers, settings.scope)

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        return _Ablation(
            self.layer_list, unit_directions(vector_for(vectors, self.vector), self.layer_list, model), self.scope
        )


class _Ablation(PreparedEdit):
    def __init__(self, layers: tuple[int, ...], units: dict[int, torch.Tensor], scope: str) -> None:
        self.layers, self._units, self._scope = layers, units, scope

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        unit = self._units[layer]
        projection = (hidden @ unit).unsqueeze(-1) * unit
        return hidden - masks.scoped(self._scope, hidden.dtype) * projection

    @property
    def parameter_count(self) -> int:
        return sum(int(u.numel()) for u in self._units.values())
