"""Norm-preserving addition: add ``coefficient * v`` then rescale each position to its old length.

Changes the direction of the residual stream without inflating it, which keeps later
layers' normalisation in the range they were trained on (a gentler edit at high strength).
Its settings are vector addition's; only the prepared edit differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.methods.add import AddVector
from engine.methods.base import PositionMasks, PreparedEdit, scaled_deltas, vector_for

if TYPE_CHECKING:  # annotations only: importing a method must not load torch (see engine.methods.base)
    import torch

    from engine.models import LoadedModel
    from engine.vectors import SteeringVector


@dataclass(frozen=True)
class AddNormPreserving(AddVector):
    name = "add_norm"
    title = "Norm-preserving addition"
    summary = "Add the vector times a coefficient, then rescale each hidden state to its original length."

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        deltas = scaled_deltas(vector_for(vectors, self.vector), self.layer_list, self.coefficient, model)
        return _NormPreserving(self.layer_list, deltas, self.scope)


class _NormPreserving(PreparedEdit):
    def __init__(self, layers: tuple[int, ...], deltas: dict[int, torch.Tensor], scope: str) -> None:
        self.layers, self._deltas, self._scope = layers, deltas, scope

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        import torch

        moved = hidden + self._deltas[layer]
        rescaled = moved * (hidden.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.where(masks.scope(self._scope).unsqueeze(-1), rescaled, hidden)

    @property
    def parameter_count(self) -> int:
        return sum(int(d.numel()) for d in self._deltas.values())
