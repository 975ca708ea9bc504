"""Small builders shared by tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.generation import forward, left_pad, positions_from_mask
from engine.methods.add import AddVector
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel
from engine.steering import BatchSteering
from engine.vectors import SteeringVector


def random_vector(model: LoadedModel, seed: int = 0, scale: float = 4.0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(model.n_layers, model.hidden_size, generator=g) * scale
    return SteeringVector("rand", directions, tuple(range(model.n_layers)), model.model_id)


def add_edit(
    model: LoadedModel, vector: SteeringVector, layers: Sequence[int], coefficient: float, scope: str = "all"
) -> PreparedEdit:
    return AddVector(vector.name, tuple(layers), coefficient, scope).prepare(model, {vector.name: vector})


def batch_logits(
    model: LoadedModel, prompts: Sequence[Sequence[int]], row_edits: Sequence[Sequence[PreparedEdit]] | None = None
) -> torch.Tensor:
    """All-position logits of one left-padded forward pass, optionally steered per row."""
    ids, mask = left_pad(model, prompts)
    with torch.no_grad():
        if row_edits is None:
            return forward(model, ids, mask, positions_from_mask(mask), last_only=False).logits
        steering = BatchSteering(model, row_edits)
        with steering.attached():
            steering.masks = PositionMasks.prompt_only(mask)
            return forward(model, ids, mask, positions_from_mask(mask), last_only=False).logits


def tokens(model: LoadedModel, text: str) -> list[int]:
    return list(model.tokenizer(text).input_ids)
