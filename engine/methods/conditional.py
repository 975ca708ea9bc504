"""Prompt-conditioned steering: apply a behaviour vector only to rows whose prompt matches a condition.

The condition is learnt from example texts where the behaviour should apply and texts
where it should not: its direction at each layer is the difference of their mean hidden
states, normalised. For each row, the cosine similarity of the prompt's hidden state (at
the condition layer) with that direction decides:

- ``hard`` mode: a gate per row, decided once before the prompt is read and kept for the
  whole generation. Rows whose gate is closed are never written, so they stay bitwise the
  plain model's, whichever other rows share their batch.
- ``soft`` mode: each token's own similarity, through a sigmoid, scales the vector.

``calibrate`` picks a threshold from the examples and reports precision, recall and F1.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import SteerLabError
from engine.extract import READ_POSITIONS, read_activations
from engine.fields import (
    Where,
    as_choice,
    as_coefficient,
    as_float,
    as_int,
    as_list,
    as_mapping,
    as_str,
    check_keys,
    required,
)
from engine.methods.base import (
    SCOPE_FIELD,
    VECTOR_LAYERS_SCOPE_FIELDS,
    FieldInfo,
    ModelFacts,
    PositionMasks,
    PreparedEdit,
    VectorLayersMethod,
    read_vector_layers_scope,
    scaled_deltas,
    vector_for,
)
from engine.models import LoadedModel
from engine.vectors import SteeringVector

MODES = ("hard", "soft")
COMPARATORS = (">", "<")


@dataclass(frozen=True)
class Condition:
    applies: tuple[str, ...]
    not_applies: tuple[str, ...]
    threshold: float
    comparator: str = ">"
    mode: str = "hard"
    layer: int | None = None  # None: the first steered layer
    read: str = "mean"
    sharpness: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "applies": list(self.applies),
            "not_applies": list(self.not_applies),
            "threshold": self.threshold,
            "comparator": self.comparator,
            "mode": self.mode,
            "read": self.read,
            "sharpness": self.sharpness,
        }
        if self.layer is not None:
            out["layer"] = self.layer
        return out


def _texts(raw: Mapping[str, Any], key: str, where: Where) -> tuple[str, ...]:
    items = as_list(required(raw, key, where), where.child(key))
    if not items:
        where.child(key).fail("is an empty list", "give at least one example text")
    return tuple(as_str(t, where.child(key).child(i)) for i, t in enumerate(items))


def parse_condition(raw: Any, where: Where) -> Condition:
    data = as_mapping(raw, where)
    check_keys(data, ("applies", "not_applies", "threshold", "comparator", "mode", "layer", "read", "sharpness"), where)
    threshold = as_float(required(data, "threshold", where), where.child("threshold"))
    if not -1.0 <= threshold <= 1.0:
        where.child("threshold").fail(
            f"is {threshold}, outside the range of cosine similarity [-1, 1]",
            "pick a value in [-1, 1] (python -m engine calibrate suggests one)",
        )
    layer = data.get("layer")
    return Condition(
        applies=_texts(data, "applies", where),
        not_applies=_texts(data, "not_applies", where),
        threshold=threshold,
        comparator=as_choice(data.get("comparator", ">"), COMPARATORS, where.child("comparator")),
        mode=as_choice(data.get("mode", "hard"), MODES, where.child("mode")),
        layer=None if layer is None else as_int(layer, where.child("layer"), 0),
        read=as_choice(data.get("read", "mean"), READ_POSITIONS, where.child("read")),
        sharpness=as_float(data.get("sharpness", 10.0), where.child("sharpness"), 0.0, 1e4),
    )


@dataclass(frozen=True)
class ConditionalAdd(VectorLayersMethod):
    name = "conditional"
    title = "Conditional steering (prompt-conditioned mask)"
    summary = "Add the vector only where the prompt resembles the 'applies' examples more than the 'not applies' ones."
    fields = (
        *VECTOR_LAYERS_SCOPE_FIELDS,
        FieldInfo("coefficient", "float", default=2.0, help="Strength of the behaviour vector."),
        SCOPE_FIELD,
        FieldInfo("condition.applies", "texts", help="Prompts where the behaviour should apply."),
        FieldInfo("condition.not_applies", "texts", help="Prompts where it should not."),
        FieldInfo("condition.threshold", "float", default=0.0, help="Cosine-similarity threshold in [-1, 1]."),
        FieldInfo(
            "condition.comparator",
            "choice",
            default=">",
            choices=COMPARATORS,
            help="Steer when the similarity is above (>) or below (<).",
        ),
        FieldInfo(
            "condition.mode",
            "choice",
            default="hard",
            choices=MODES,
            help="hard: per-row gate; soft: per-token sigmoid.",
        ),
    )

    vector: str
    layer_list: tuple[int, ...]
    scope: str
    coefficient: float
    condition: Condition

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> ConditionalAdd:
        data = _unflatten(raw)
        check_keys(data, ("vector", "layers", "coefficient", "scope", "condition"), where)
        vector, layers, scope = read_vector_layers_scope(data, where)
        return cls(
            vector,
            layers,
            scope,
            as_coefficient(required(data, "coefficient", where), where.child("coefficient")),
            parse_condition(required(data, "condition", where), where.child("condition")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "vector": self.vector,
            "layers": list(self.layer_list),
            "coefficient": self.coefficient,
            "scope": self.scope,
            "condition": self.condition.to_dict(),
        }

    @property
    def condition_layer(self) -> int:
        return self.condition.layer if self.condition.layer is not None else self.layer_list[0]

    def check(self, facts: ModelFacts, where: Where) -> None:
        super().check(facts, where)
        if not 0 <= self.condition_layer < facts.n_layers:
            where.child("condition").child("layer").fail(
                f"layer {self.condition_layer} is out of range for model '{facts.model_id}'",
                f"use a layer from 0 to {facts.n_layers - 1}",
            )

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        started = time.perf_counter()
        directions = condition_directions(model, self.condition)
        deltas = scaled_deltas(vector_for(vectors, self.vector), self.layer_list, self.coefficient, model)
        return _Conditional(self, deltas, directions, time.perf_counter() - started)


def _unflatten(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Accept dashboard-style ``condition.x`` keys as well as a nested ``condition`` mapping."""
    out: dict[str, Any] = {k: v for k, v in raw.items() if not k.startswith("condition.")}
    nested = {k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith("condition.")}
    if nested:
        out["condition"] = {**(raw.get("condition") or {}), **nested}
    return out


def _tokens(model: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    return [list(model.tokenizer(t).input_ids) for t in texts]


def condition_directions(model: LoadedModel, condition: Condition) -> torch.Tensor:
    """Unit condition direction per layer, ``[layers, hidden]``, on the model's device."""
    applies = read_activations(model, _tokens(model, condition.applies), condition.read).mean(0)
    not_applies = read_activations(model, _tokens(model, condition.not_applies), condition.read).mean(0)
    difference = applies - not_applies
    norms = difference.norm(dim=-1, keepdim=True)
    if float(norms.min()) == 0.0:
        raise SteerLabError(
            "The condition's 'applies' and 'not_applies' examples read the same; give examples that differ."
        )
    return (difference / norms).to(model.device, model.dtype)


def similarities(
    model: LoadedModel, prompts: Sequence[Sequence[int]], directions: torch.Tensor, layer: int, read: str
) -> torch.Tensor:
    """Cosine similarity of each prompt's hidden state at ``layer`` with the condition direction."""
    hidden = read_activations(model, prompts, read)[:, layer].to(directions.device, directions.dtype)
    return torch.nn.functional.cosine_similarity(hidden, directions[layer].expand_as(hidden), dim=-1)


class _Conditional(PreparedEdit):
    def __init__(
        self, spec: ConditionalAdd, deltas: dict[int, torch.Tensor], directions: torch.Tensor, seconds: float
    ) -> None:
        self.layers = spec.layer_list
        self._spec, self._deltas, self._directions = spec, deltas, directions
        self._gate: torch.Tensor | None = None
        self.last_similarities: torch.Tensor | None = None
        self._seconds = seconds
        self._gate_seconds = 0.0

    def begin(self, model: LoadedModel, prompts: Sequence[Sequence[int]]) -> None:
        started = time.perf_counter()
        c = self._spec.condition
        sims = similarities(model, prompts, self._directions, self._spec.condition_layer, c.read)
        self._gate_seconds += time.perf_counter() - started
        self.last_similarities = sims
        self._gate = sims > c.threshold if c.comparator == ">" else sims < c.threshold

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        c = self._spec.condition
        scope = masks.scoped(self._spec.scope, hidden.dtype)
        if c.mode == "soft":
            direction = self._directions[layer]
            sims = torch.nn.functional.cosine_similarity(hidden, direction.expand_as(hidden), dim=-1)
            sign = 1.0 if c.comparator == ">" else -1.0
            weight = torch.sigmoid(sign * c.sharpness * (sims - c.threshold)).unsqueeze(-1)
            return hidden + scope * weight * self._deltas[layer]
        if self._gate is None or self._gate.shape[0] != hidden.shape[0]:
            raise RuntimeError("conditional edit used without begin() for this batch")
        # torch.where keeps gated-off rows exactly as they were (not even + 0.0).
        return torch.where(self._gate[:, None, None], hidden + scope * self._deltas[layer], hidden)

    @property
    def parameter_count(self) -> int:
        return sum(int(d.numel()) for d in self._deltas.values()) + int(self._directions.numel())

    def cost(self) -> dict[str, float]:
        return {"seconds": self._gate_seconds, "condition_extraction_seconds": self._seconds}


@dataclass(frozen=True)
class Calibration:
    threshold: float
    precision: float
    recall: float
    f1: float
    lowest: float
    highest: float
    examples: int


def calibrate(model: LoadedModel, spec: ConditionalAdd) -> Calibration:
    """The threshold that best separates the condition's own examples (by F1), and its scores."""
    c = spec.condition
    directions = condition_directions(model, c)
    texts = list(c.applies) + list(c.not_applies)
    sims = similarities(model, _tokens(model, texts), directions, spec.condition_layer, c.read).float().cpu()
    truth = torch.tensor([True] * len(c.applies) + [False] * len(c.not_applies))
    values = sorted(set(sims.tolist()))
    candidates = [(a + b) / 2 for a, b in itertools.pairwise(values)] or values
    best = Calibration(0.0, 0.0, 0.0, -1.0, float(sims.min()), float(sims.max()), len(texts))
    for threshold in candidates:
        predicted = sims > threshold if c.comparator == ">" else sims < threshold
        tp = int((predicted & truth).sum())
        precision = tp / max(int(predicted.sum()), 1)
        recall = tp / max(int(truth.sum()), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if f1 > best.f1:
            best = Calibration(float(threshold), precision, recall, f1, best.lowest, best.highest, len(texts))
    return best
