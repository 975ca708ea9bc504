"""Apply per-row steering to one batched forward pass with forward hooks.

:class:`BatchSteering` takes, for each row of a batch, the list of prepared edits of
that row's variant, so one batch can carry many variants. It attaches one forward hook
per edited decoder layer; the hook gathers each edit's rows, lets the edit compute their
new hidden states, and scatters them into a new output tensor. Rows with no edit are
never written, so they stay bitwise equal to the plain model's. The model itself is
never changed, and hooks are removed in ``finally``: leaving :meth:`attached`, even by an
exception, gives back exactly the original model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from engine.layers import hidden_output, replace_hidden_output
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel


class BatchSteering:
    """Per-row edits for one batch; set :attr:`masks` before every forward pass."""

    def __init__(self, model: LoadedModel, row_edits: Sequence[Sequence[PreparedEdit]]) -> None:
        self.model = model
        self.batch_size = len(row_edits)
        # Group rows by edit (one edit object per variant), keeping first-seen order so
        # a variant's stacked edits at one layer apply in the order they were listed.
        rows_of: dict[int, tuple[PreparedEdit, list[int]]] = {}
        for row, edits in enumerate(row_edits):
            for edit in edits:
                rows_of.setdefault(id(edit), (edit, []))[1].append(row)
        self._rows = list(rows_of.values())
        self._by_layer: dict[int, list[tuple[PreparedEdit, torch.Tensor | None]]] = {}
        for edit, rows in self._rows:
            index = None if len(rows) == self.batch_size else torch.tensor(rows, device=model.device)
            for layer in edit.layers:
                self._by_layer.setdefault(layer, []).append((edit, index))
        self.masks: PositionMasks | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def begin(self, prompts: Sequence[Sequence[int]]) -> None:
        """Let prompt-dependent edits prepare their rows (call before attaching)."""
        for edit, rows in self._rows:
            edit.begin(self.model, [prompts[r] for r in rows])

    def refresh(self, generated_so_far: int, sequences: Sequence[Sequence[int]]) -> None:
        """Give edits that ask for it the tokens so far, with this batch's hooks paused."""
        due = [(e, rows) for e, rows in self._rows if e.refresh_every and generated_so_far % e.refresh_every == 0]
        if not due:
            return
        self._detach()
        try:
            for edit, rows in due:
                edit.refresh(self.model, [sequences[r] for r in rows])
        finally:
            self._attach()

    @property
    def is_empty(self) -> bool:
        return not self._by_layer

    @contextmanager
    def attached(self) -> Iterator[BatchSteering]:
        try:
            self._attach()
            yield self
        finally:
            self._detach()

    def _attach(self) -> None:
        for layer in self._by_layer:
            self._handles.append(self.model.layers[layer].register_forward_hook(self._make_hook(layer)))

    def _detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _make_hook(self, layer: int) -> Any:
        entries = self._by_layer[layer]

        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            hidden = hidden_output(output)
            assert isinstance(hidden, torch.Tensor)
            masks = self.masks or _all_prompt(hidden)
            for edit, index in entries:
                if index is None:
                    hidden = edit.apply(layer, hidden, masks)
                else:
                    edited = edit.apply(layer, hidden.index_select(0, index), masks.rows(index))
                    hidden = hidden.index_copy(0, index, edited)
            return replace_hidden_output(output, hidden)

        return hook


def _all_prompt(hidden: torch.Tensor) -> PositionMasks:
    ones = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    return PositionMasks(ones, torch.zeros_like(ones))
