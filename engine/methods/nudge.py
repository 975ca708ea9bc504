"""Gradient-guided activation nudging: a few optimisation steps on an additive delta, per row.

Before a batch is generated, each steered row gets its own delta at one layer, found by
gradient ascent with the weights frozen: raise the log-probability of target words at
the next token, lower it for an "avoid" list, or turn the last hidden state toward a
vector's direction (cosine). Each step moves the delta by ``step_size`` along the
normalised gradient, and the delta is kept within ``max_norm``. The delta is then added
like a steering vector; with ``reapply_every: k`` it is optimised again every k generated
tokens on the text so far. Each step costs a forward and a backward pass, recorded as
compute so comparisons show what nudging costs over plain addition.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, ValidationInfo, model_validator

from engine.declaration import VECTOR, Settings, choice, number, texts, where_of, whole
from engine.errors import SteerLabError
from engine.fields import MAX_COEFFICIENT, Where
from engine.methods.base import (
    SCOPES,
    ModelFacts,
    PositionMasks,
    PreparedEdit,
    SteeringMethod,
    vector_for,
)

if TYPE_CHECKING:  # annotations only: importing a method must not load torch (see engine.methods.base)
    import torch

    from engine.models import LoadedModel
    from engine.vectors import SteeringVector

TARGETS = ("words", "avoid", "vector")

# Gradient steps per row and decode step: each is a forward and backward pass, so a bound
# keeps one variant from stalling a run (a handful is what nudging needs).
MAX_STEPS = 100


class NudgeSettings(Settings):
    layer: Annotated[int, whole()] = Field(description="The decoder layer whose output is nudged.", examples=[0])
    target: Annotated[str, choice(TARGETS)] = Field(
        "words", description="Raise target words, lower avoided ones, or turn toward a vector."
    )
    words: Annotated[tuple[str, ...], texts(what="word", verb="list")] = Field(
        (), description="Target (or avoided) words, for the words/avoid targets."
    )
    vector: Annotated[str, VECTOR] = Field("", description="For the vector target.")
    steps: Annotated[int, whole(maximum=MAX_STEPS)] = Field(
        description="Optimisation steps (forward + backward each).", examples=[5]
    )
    step_size: Annotated[float, number(1e-6, MAX_COEFFICIENT)] = Field(2.0, description="Length of each step.")
    max_norm: Annotated[float, number(1e-6, MAX_COEFFICIENT)] = Field(
        8.0, description="Largest length the delta may reach."
    )
    reapply_every: Annotated[int, whole(0, 100_000)] = Field(
        0, description="Optimise again every k generated tokens (0 = only on the prompt)."
    )
    scope: Annotated[str, choice(SCOPES)] = Field("all", description="Which tokens are edited.")

    @model_validator(mode="after")
    def _target_has_what_it_needs(self, info: ValidationInfo) -> NudgeSettings:
        where = where_of(info)
        if self.steps < 1:
            where.child("steps").fail(f"is {self.steps}, so nothing would be optimised", "give 1 or more steps")
        if self.target == "vector" and not self.vector:
            where.child("vector").fail("is missing", "add it")
        if self.target != "vector" and not self.words:
            where.child("words").fail("is missing", "add it")
        return self


@dataclass(frozen=True)
class Nudge(SteeringMethod):
    name = "nudge"
    title = "Gradient-guided nudging"
    summary = "Optimise a small per-row delta at one layer so the model leans toward target words (or a vector)."
    settings = NudgeSettings

    layer: int
    target: str
    steps: int
    step_size: float
    max_norm: float
    words: tuple[str, ...] = ()
    vector: str = ""
    reapply_every: int = 0
    scope: str = "all"

    @classmethod
    def from_settings(cls, settings: NudgeSettings) -> Nudge:
        vector_target = settings.target == "vector"
        return cls(
            layer=settings.layer,
            target=settings.target,
            steps=settings.steps,
            step_size=settings.step_size,
            max_norm=settings.max_norm,
            words=() if vector_target else settings.words,
            vector=settings.vector if vector_target else "",
            reapply_every=settings.reapply_every,
            scope=settings.scope,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.name,
            "layer": self.layer,
            "target": self.target,
            "steps": self.steps,
            "step_size": self.step_size,
            "max_norm": self.max_norm,
            "reapply_every": self.reapply_every,
            "scope": self.scope,
        }
        if self.target == "vector":
            out["vector"] = self.vector
        else:
            out["words"] = list(self.words)
        return out

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def vector_names(self) -> tuple[str, ...]:
        return (self.vector,) if self.target == "vector" else ()

    def check(self, facts: ModelFacts, where: Where) -> None:
        if not 0 <= self.layer < facts.n_layers:
            where.child("layer").fail(
                f"layer {self.layer} is out of range for model '{facts.model_id}'",
                f"use a layer from 0 to {facts.n_layers - 1}",
            )

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        import torch

        goal: torch.Tensor
        if self.target == "vector":
            goal = vector_for(vectors, self.vector).for_layer(self.layer).to(model.device, torch.float32)
        else:
            goal = torch.tensor(sorted(target_token_ids(model, self.words)), device=model.device)
        return _Nudging(self, goal)


def target_token_ids(model: LoadedModel, words: Sequence[str]) -> set[int]:
    """Token ids that stand for the words at the next position.

    A word that is one token (alone or after a space) is that token. For a word split
    into pieces, its first piece counts only if it carries at least three letters: a
    short piece such as "l" of "lonely" begins too many other words, and pushing it
    makes gibberish rather than the word.
    """
    ids: set[int] = set()
    for word in words:
        for text in (word, " " + word):
            pieces = [
                t
                for t in model.tokenizer(text, add_special_tokens=False).input_ids
                if model.tokenizer.decode([t]).strip()
            ]
            if pieces and (len(pieces) == 1 or len(model.tokenizer.decode([pieces[0]]).strip()) >= 3):
                ids.add(int(pieces[0]))
    if not ids:
        raise SteerLabError(
            f"None of the words {list(words)} maps to a usable token of model '{model.model_id}'; list whole words the model knows."
        )
    return ids


class _Nudging(PreparedEdit):
    def __init__(self, spec: Nudge, goal: torch.Tensor) -> None:
        self.layers = (spec.layer,)
        self.refresh_every = spec.reapply_every
        self._spec, self._goal = spec, goal
        self._delta: torch.Tensor | None = None  # [rows, hidden]
        self._passes = 0
        self._seconds = 0.0
        self._rows = 0

    def begin(self, model: LoadedModel, prompts: Sequence[Sequence[int]]) -> None:
        self._delta = None
        self._optimise(model, prompts)

    def refresh(self, model: LoadedModel, sequences: Sequence[Sequence[int]]) -> None:
        self._optimise(model, sequences)

    def _optimise(self, model: LoadedModel, token_lists: Sequence[Sequence[int]]) -> None:
        import torch

        from engine.generation import forward, left_pad, positions_from_mask
        from engine.layers import hidden_output, replace_hidden_output

        started = time.perf_counter()
        s = self._spec
        ids, mask = left_pad(model, token_lists)
        positions = positions_from_mask(mask)
        start = (
            self._delta
            if self._delta is not None
            else torch.zeros(len(token_lists), model.hidden_size, device=model.device)
        )
        delta = start.detach().float().clone().requires_grad_(True)
        captured: list[torch.Tensor] = []

        def add_delta(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            hidden = hidden_output(output)
            assert isinstance(hidden, torch.Tensor)
            # .to(hidden.device): the block may sit on another GPU than the embeddings (device_map="auto").
            edited = hidden + mask.unsqueeze(-1).to(hidden.device, hidden.dtype) * delta.to(
                hidden.device, hidden.dtype
            ).unsqueeze(1)
            captured.append(edited[:, -1, :])  # the last position, for the vector target
            return replace_hidden_output(output, edited)

        handle = model.layers[s.layer].register_forward_hook(add_delta)
        try:
            with torch.enable_grad():
                for _ in range(s.steps):
                    captured.clear()
                    logits = forward(model, ids, mask, positions, last_only=False).logits.float()
                    objective = self._objective(logits, mask, captured[0].float())
                    (gradient,) = torch.autograd.grad(objective, [delta])
                    with torch.no_grad():
                        norms = gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                        delta += s.step_size * gradient / norms
                        lengths = delta.norm(dim=-1, keepdim=True)
                        delta *= torch.clamp(s.max_norm / lengths.clamp_min(1e-12), max=1.0)
        finally:
            handle.remove()
        self._delta = delta.detach().to(model.dtype)
        self._passes += s.steps
        self._rows += len(token_lists)
        self._seconds += time.perf_counter() - started

    def _objective(self, logits: torch.Tensor, mask: torch.Tensor, last_hidden: torch.Tensor) -> torch.Tensor:
        import torch

        if self._spec.target == "vector":
            goal = self._goal.to(last_hidden.device)
            return torch.nn.functional.cosine_similarity(last_hidden, goal.expand_as(last_hidden), dim=-1).sum()
        # log P(next token is a target word), at every real position of the text: a delta
        # that leans the whole continuation toward the words, not only the next token.
        mass = torch.logsumexp(logits.log_softmax(dim=-1)[..., self._goal.to(logits.device)], dim=-1)
        weights = mask.to(mass.device, mass.dtype)
        per_row = (mass * weights).sum(-1) / weights.sum(-1)
        return (-per_row if self._spec.target == "avoid" else per_row).sum()

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        if self._delta is None or self._delta.shape[0] != hidden.shape[0]:
            raise RuntimeError("nudge edit used without begin() for this batch")
        return hidden + masks.scoped(self._spec.scope, hidden.dtype) * self._delta.to(hidden.device).unsqueeze(1)

    @property
    def parameter_count(self) -> int:
        return 0 if self._delta is None else int(self._delta.shape[-1])

    def cost(self) -> dict[str, float]:
        return {
            "seconds": self._seconds,
            "nudge_forward_backward_passes": float(self._passes),
            "nudge_ms_per_row": 1000.0 * self._seconds / self._rows if self._rows else 0.0,
        }
