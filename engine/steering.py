"""Apply per-row steering to one batched forward pass with forward hooks.

:class:`BatchSteering` takes, for each row of a batch, the list of prepared edits of
that row's variant, so one batch can carry many variants. It attaches one forward hook
per edited decoder layer, which runs that layer's plan of steps:

- a *fused addition*: every additive edit at the layer (``PreparedEdit.additive``: plain
  vector addition) folded into one ``[batch, hidden]`` delta table per scope (zero rows for
  rows without one) and applied as one add over the batch, so 64 rows carrying 64 different
  additions cost what one does; the masked sum of the tables is worked out once per set of
  position masks, so the decode steps of one batch composition cost exactly one add;
- *gathered edits*: any other edit gathers its rows, computes their new hidden states,
  and writes them into a copy of the layer's output (one copy per layer, not per edit).

Rows with no edit keep the plain model's values: gathered edits never write them, and the
fused addition adds exact zeros to them (``h + 0.0 == h``; only a ``-0.0`` turns into
``+0.0``, which no later operation tells apart), so their logits equal the plain model's.
Steps keep each row's order of edits at a layer (additions move only past edits of other
rows). The model itself is never changed, and hooks are removed in ``finally``: leaving
:meth:`attached`, even by an exception, gives back exactly the original model.

With ``device_map="auto"`` layers sit on several devices: each layer's delta matrices and
row indices are built on that layer's device, and the position masks are moved to the
hidden state's device inside the hook (once per forward pass and device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from engine.layers import hidden_output, replace_hidden_output
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel

# One edit and the batch rows it edits.
_Entry = tuple[PreparedEdit, list[int]]


class BatchSteering:
    """Per-row edits for one batch; set :attr:`masks` before every forward pass.

    ``fuse_additions=False`` sends every edit through the gather/scatter path (the
    reference the fused path is tested and benchmarked against).
    """

    def __init__(
        self, model: LoadedModel, row_edits: Sequence[Sequence[PreparedEdit]], fuse_additions: bool = True
    ) -> None:
        self.model = model
        self.batch_size = len(row_edits)
        # Group rows by edit (one edit object per variant), keeping first-seen order so
        # a variant's stacked edits at one layer apply in the order they were listed.
        rows_of: dict[int, _Entry] = {}
        for row, edits in enumerate(row_edits):
            for edit in edits:
                rows_of.setdefault(id(edit), (edit, []))[1].append(row)
        self._rows = list(rows_of.values())
        entries_of: dict[int, list[_Entry]] = {}
        for edit, rows in self._rows:
            for layer in edit.layers:
                entries_of.setdefault(layer, []).append((edit, rows))
        self._steps = {
            layer: _plan(layer, entries, self.batch_size, model.layer_device(layer), fuse_additions)
            for layer, entries in entries_of.items()
        }
        self.masks: PositionMasks | None = None
        self._moved_masks: dict[torch.device, tuple[PositionMasks, PositionMasks]] = {}
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
        return not self._steps

    @contextmanager
    def attached(self) -> Iterator[BatchSteering]:
        try:
            self._attach()
            yield self
        finally:
            self._detach()

    def _attach(self) -> None:
        for layer in self._steps:
            self._handles.append(self.model.layers[layer].register_forward_hook(self._make_hook(layer)))

    def _detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _make_hook(self, layer: int) -> Any:
        steps = self._steps[layer]

        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            hidden = hidden_output(output)
            assert isinstance(hidden, torch.Tensor)
            masks = self._masks_on(hidden)
            for step in steps:
                hidden = step.run(layer, hidden, masks)
            return replace_hidden_output(output, hidden)

        return hook

    def _masks_on(self, hidden: torch.Tensor) -> PositionMasks:
        """This pass's masks on the hidden state's device (moved once per pass and device)."""
        masks = self.masks
        if masks is None:
            return _all_prompt(hidden)
        if masks.prompt.device == hidden.device:
            return masks
        cached = self._moved_masks.get(hidden.device)
        if cached is None or cached[0] is not masks:
            moved = {
                f.name: value.to(hidden.device) if isinstance(value := getattr(masks, f.name), torch.Tensor) else value
                for f in dataclasses.fields(masks)
            }
            cached = (masks, PositionMasks(**moved))
            self._moved_masks[hidden.device] = cached
        return cached[1]


class _Gathered:
    """Other edits, in order, each on its rows: gather them, apply, write the result back.

    The layer's output is copied once for the whole stage (not once per edit), and the
    rows are written into that copy, so many distinct edits cost their own rows' work.
    """

    def __init__(self, entries: list[tuple[PreparedEdit, torch.Tensor | None]]) -> None:
        self.entries = entries

    def run(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        owned = False  # whether ``hidden`` is our own copy, which may be written in place
        for edit, index in self.entries:
            if index is None:
                hidden, owned = edit.apply(layer, hidden, masks), False
                continue
            edited = edit.apply(layer, hidden.index_select(0, index), masks.rows(index))
            if not owned:
                hidden, owned = hidden.clone(), True
            hidden.index_copy_(0, index, edited)
        return hidden


class _FusedAdditions:
    """Many additive edits at one layer as one ``h + addition`` for the whole batch.

    ``deltas`` holds, per scope, a ``[batch, hidden]`` table: the sum of the deltas of that
    row's additions with that scope, zero for rows without one. ``addition`` is
    ``sum over scopes of scope_mask * table`` (``[batch, tokens, hidden]``); it depends only on
    the pass's masks, so it is worked out once per masks object and a run of decode steps
    with one set of masks (continuous batching) costs one add per layer, whatever the number
    of distinct configurations. A row without an addition adds exact zeros, so its values
    stay those of the plain model.
    """

    def __init__(self, deltas: list[tuple[str, torch.Tensor]]) -> None:
        self.deltas = deltas
        self._addition: tuple[PositionMasks, torch.dtype, torch.Tensor] | None = None

    def run(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        cached = self._addition
        if cached is None or cached[0] is not masks or cached[1] != hidden.dtype:
            cached = (masks, hidden.dtype, self._sum(masks, hidden.dtype))
            self._addition = cached
        return hidden + cached[2]

    def _sum(self, masks: PositionMasks, dtype: torch.dtype) -> torch.Tensor:
        total: torch.Tensor | None = None
        for scope, table in self.deltas:
            # A 0/1 mask times a delta is exact; scopes of one row are summed before the add.
            part = masks.scoped(scope, dtype) * table.to(dtype).unsqueeze(1)
            total = part if total is None else total + part
        assert total is not None
        return total


_Step = _Gathered | _FusedAdditions


def _plan(layer: int, entries: list[_Entry], batch_size: int, device: torch.device, fuse: bool) -> list[_Step]:
    """The steps of one layer: stages of additions (fused) and of other edits (gathered).

    An edit joins the first stage of its kind that comes no earlier than the last stage
    touching any of its rows, so each row sees its edits in their listed order; additions
    commute with each other, and edits of different rows touch different rows.
    """
    # Each stage: whether it is additive, and its edits with their rows and (delta, scope).
    stages: list[tuple[bool, list[tuple[PreparedEdit, list[int], tuple[torch.Tensor, str] | None]]]] = []
    last_stage: dict[int, int] = {}
    for edit, rows in entries:
        addition = edit.additive(layer) if fuse else None
        earliest = max(last_stage.get(r, 0) for r in rows)
        target = next((i for i in range(earliest, len(stages)) if stages[i][0] == (addition is not None)), None)
        if target is None:
            stages.append((addition is not None, []))
            target = len(stages) - 1
        stages[target][1].append((edit, rows, addition))
        for r in rows:
            last_stage[r] = target

    def index_of(rows: Sequence[int]) -> torch.Tensor | None:
        return None if list(rows) == list(range(batch_size)) else torch.tensor(rows, device=device)

    steps: list[_Step] = []
    for additive, stage in stages:
        if not additive:
            steps.append(_Gathered([(edit, index_of(rows)) for edit, rows, _ in stage]))
            continue
        matrices: dict[str, torch.Tensor] = {}
        for _, rows, addition in stage:
            assert addition is not None
            delta, scope = addition
            if scope not in matrices:
                matrices[scope] = torch.zeros(batch_size, delta.shape[-1], dtype=delta.dtype, device=device)
            where = torch.tensor(rows, device=device)
            matrices[scope].index_add_(0, where, delta.to(device).expand(len(rows), -1))
        steps.append(_FusedAdditions(list(matrices.items())))
    return steps


def _all_prompt(hidden: torch.Tensor) -> PositionMasks:
    ones = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    return PositionMasks(ones, torch.zeros_like(ones))
