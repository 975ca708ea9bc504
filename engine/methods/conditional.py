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

The examples are read the way the experiment's prompts are: as user messages through the
chat template when the prompts go through it (``framed(chat_template)``; the gate then
compares templated prompts with templated examples), as raw text otherwise.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from engine.declaration import COEFFICIENT, LAYERS, VECTOR, Check, Settings, choice, nested, number, texts, whole
from engine.errors import SteerLabError
from engine.extraction_choices import PROMPT_READ_POSITIONS
from engine.fields import Where, as_float
from engine.methods.base import (
    SCOPES,
    ModelFacts,
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

MODES = ("hard", "soft")
COMPARATORS = (">", "<")


def _threshold(value: Any, where: Where) -> float:
    threshold = as_float(value, where)
    if not -1.0 <= threshold <= 1.0:
        where.fail(
            f"is {threshold}, outside the range of cosine similarity [-1, 1]",
            "pick a value in [-1, 1] (python -m engine calibrate suggests one)",
        )
    return threshold


THRESHOLD = Check(_threshold, {"type": "number", "minimum": -1.0, "maximum": 1.0}, "float")


class Condition(Settings):
    """When a conditional edit applies: learnt from example prompts, decided by a similarity threshold."""

    applies: Annotated[tuple[str, ...], texts(what="example text")] = Field(
        description="Prompts where the behaviour should apply."
    )
    not_applies: Annotated[tuple[str, ...], texts(what="example text")] = Field(
        description="Prompts where it should not."
    )
    threshold: Annotated[float, THRESHOLD] = Field(
        description="Cosine-similarity threshold in [-1, 1].", examples=[0.0]
    )
    comparator: Annotated[str, choice(COMPARATORS)] = Field(
        ">", description="Steer when the similarity is above (>) or below (<)."
    )
    mode: Annotated[str, choice(MODES)] = Field("hard", description="hard: per-row gate; soft: per-token sigmoid.")
    layer: Annotated[int | None, whole(0)] = Field(
        None, description="Layer whose hidden state is compared (default: the first steered layer)."
    )
    read: Annotated[str, choice(PROMPT_READ_POSITIONS)] = Field(
        "mean", description="Compare the prompt's last token or its mean over tokens."
    )
    sharpness: Annotated[float, number(0.0, 1e4)] = Field(
        10.0, description="Soft mode: how steeply the sigmoid turns similarity into strength."
    )

    def to_dict(self) -> dict[str, Any]:
        return self.plain()


def parse_condition(raw: Any, where: Where) -> Condition:
    return Condition.checked(raw, where)


class ConditionalSettings(Settings):
    vector: Annotated[str, VECTOR] = Field(description="Which of the experiment's vectors.")
    layers: Annotated[tuple[int, ...], LAYERS] = Field(
        description="Decoder layers whose output is edited.", examples=[[0]]
    )
    coefficient: Annotated[float, COEFFICIENT] = Field(description="Strength of the behaviour vector.", examples=[2.0])
    scope: Annotated[str, choice(SCOPES)] = Field("all", description="Which tokens are edited.")
    condition: Annotated[Condition, nested(Condition)] = Field(description="When the edit applies.")


@dataclass(frozen=True)
class ConditionalAdd(VectorLayersMethod):
    name = "conditional"
    title = "Conditional steering (prompt-conditioned mask)"
    summary = "Add the vector only where the prompt resembles the 'applies' examples more than the 'not applies' ones."
    settings = ConditionalSettings

    vector: str
    layer_list: tuple[int, ...]
    scope: str
    coefficient: float
    condition: Condition
    # How the experiment renders prompts ("auto": through the chat template, if the model has
    # one; "off": raw), set by framed(); not a setting. Unframed, examples are read raw as before.
    chat_template: str = "off"

    @classmethod
    def from_settings(cls, settings: ConditionalSettings) -> ConditionalAdd:
        return cls(settings.vector, settings.layers, settings.scope, settings.coefficient, settings.condition)

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

    def framed(self, chat_template: str) -> ConditionalAdd:
        return replace(self, chat_template=chat_template)

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        started = time.perf_counter()
        directions = condition_directions(model, self.condition, self.chat_template)
        deltas = scaled_deltas(vector_for(vectors, self.vector), self.layer_list, self.coefficient, model)
        return _Conditional(self, deltas, directions, time.perf_counter() - started)


def example_tokens(model: LoadedModel, texts: Sequence[str], chat_template: str = "off") -> list[list[int]]:
    """Condition examples as the experiment's prompts are rendered (user messages through the template, or raw)."""
    from engine.prompting import render_prompt
    from engine.spec import VariantSpec

    plain = VariantSpec("condition")
    return [render_prompt(model, text, plain, chat_template) for text in texts]


def condition_directions(model: LoadedModel, condition: Condition, chat_template: str = "off") -> torch.Tensor:
    """Unit condition direction per layer, ``[layers, hidden]``, on the model's device."""
    from engine.extract import read_activations

    applies = read_activations(model, example_tokens(model, condition.applies, chat_template), condition.read).mean(0)
    not_applies = read_activations(
        model, example_tokens(model, condition.not_applies, chat_template), condition.read
    ).mean(0)
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
    import torch

    from engine.extract import read_activations

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
        import torch

        c = self._spec.condition
        scope = masks.scoped(self._spec.scope, hidden.dtype)
        if c.mode == "soft":
            direction = self._directions[layer].to(hidden.device)  # a no-op unless blocks sit on several GPUs
            sims = torch.nn.functional.cosine_similarity(hidden, direction.expand_as(hidden), dim=-1)
            sign = 1.0 if c.comparator == ">" else -1.0
            weight = torch.sigmoid(sign * c.sharpness * (sims - c.threshold)).unsqueeze(-1)
            return hidden + scope * weight * self._deltas[layer]
        if self._gate is None or self._gate.shape[0] != hidden.shape[0]:
            raise RuntimeError("conditional edit used without begin() for this batch")
        # torch.where keeps gated-off rows exactly as they were (not even + 0.0).
        gate = self._gate.to(hidden.device)
        return torch.where(gate[:, None, None], hidden + scope * self._deltas[layer], hidden)

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
    """The threshold that best separates the condition's own examples (by F1), and its scores.

    The examples are rendered as ``spec`` is framed (``spec.framed(chat_template)``), as the gate will see prompts.
    """
    import torch

    c = spec.condition
    directions = condition_directions(model, c, spec.chat_template)
    texts = list(c.applies) + list(c.not_applies)
    tokens = example_tokens(model, texts, spec.chat_template)
    sims = similarities(model, tokens, directions, spec.condition_layer, c.read).float().cpu()
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
