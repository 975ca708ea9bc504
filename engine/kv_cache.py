"""A preallocated key/value cache: new keys and values are written in place, not concatenated.

transformers' ``DynamicCache`` extends every layer's keys and values with ``torch.cat`` at
every decode step, so each step copies the whole cache and gets slower as the text grows
(on a GPT-2-sized model about 115 ms per step at the start and 350-450 ms by 256 tokens).
:class:`PreallocatedLayer` keeps one ``[rows, heads, capacity, head_dim]`` buffer per layer,
writes each step's column into it and hands attention a view of the used columns, so a step
costs the same at token 5 and at token 500. When the buffer is full it is reallocated at
twice the needed size, so a run whose length is known up front (prompt width plus
``max_new_tokens``) never reallocates.

Continuous batching (:mod:`engine.continuous`) also needs row operations: keep some rows
(:meth:`PreallocatedCache.select_rows`, moved to the front in place), add a batch's rows
right-aligned with the running ones (:meth:`PreallocatedCache.append_rows`: the shorter side is
left-padded, and only the new rows are written, so a request joining a long batch does not copy
it), and drop leading columns that are padding in every remaining row
(:meth:`PreallocatedCache.drop_leading`, a shift of a start offset, no copy). The used part is
``buffer[:rows, :, start:start + length]``.

Models with sliding-window or linear-attention (recurrent) layers keep transformers' own
cache (:func:`new_cache`): a sliding layer keeps only the last window of keys and its mask
sizes depend on that, and a recurrent layer holds a state, not columns, so neither is a
plain growing buffer that can be written in place and padded on the left.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, get_layer_types_and_kwargs

log = logging.getLogger(__name__)


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in a buffer that grows by doubling, written in place.

    The buffer is ``[row capacity, heads, capacity, head_dim]``; the first ``rows`` rows and
    the columns ``start:start + length`` are in use, and attention reads a view of them.
    """

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity_hint = capacity  # columns to reserve at the first write (and at regrowth)
        self.row_limit = 0  # rows worth reserving when rows are appended (the batcher's max_rows)
        self.rows = 0
        self.start = 0
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        capacity = max(self.capacity_hint, key_states.shape[-2])
        self.key_buffer = key_states.new_zeros(_with_columns(key_states.shape, capacity))
        self.value_buffer = value_states.new_zeros(_with_columns(value_states.shape, capacity))
        self.rows = key_states.shape[0]
        self.start = self.length = 0
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        self._reserve(self.length + new)
        assert self.key_buffer is not None and self.value_buffer is not None
        end = self.start + self.length
        self.key_buffer[: self.rows, :, end : end + new].copy_(key_states)
        self.value_buffer[: self.rows, :, end : end + new].copy_(value_states)
        self.length += new
        self._publish()
        return self.keys, self.values  # type: ignore[return-value]

    def _reserve(self, needed: int, rows: int = 0) -> None:
        """Make room for ``needed`` used columns from ``start`` and ``rows`` rows: move to a new buffer if not."""
        assert self.key_buffer is not None and self.value_buffer is not None
        capacity, row_capacity = self.key_buffer.shape[-2], self.key_buffer.shape[0]
        if self.start + needed <= capacity and rows <= row_capacity:
            return
        # Doubling makes reallocation rare (amortised one copy per token); a known length never needs it.
        new_capacity = max(needed, self.capacity_hint) if needed <= self.capacity_hint else 2 * needed
        self.capacity_hint = max(self.capacity_hint, new_capacity)
        new_rows = row_capacity if rows <= row_capacity else max(rows, min(2 * rows, self.row_limit))
        self.key_buffer = self._moved(self.key_buffer, new_rows, new_capacity)
        self.value_buffer = self._moved(self.value_buffer, new_rows, new_capacity)
        self.start = 0

    def _moved(self, buffer: torch.Tensor, rows: int, capacity: int) -> torch.Tensor:
        out = _zeros(buffer, rows, capacity)
        used = slice(self.start, self.start + self.length)
        out[: self.rows, :, : self.length].copy_(buffer[: self.rows, :, used])
        return out

    def _publish(self) -> None:
        # Views of the used rows and columns: what attention reads (and what DynamicLayer's readers expect).
        assert self.key_buffer is not None and self.value_buffer is not None
        end = self.start + self.length
        self.keys = self.key_buffer[: self.rows, :, self.start : end]
        self.values = self.value_buffer[: self.rows, :, self.start : end]

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        self.rows = self.start = self.length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        self._publish()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (in that order), moved to the front of the buffer in place."""
        if not self.is_initialized:
            return
        assert self.key_buffer is not None and self.value_buffer is not None
        index = indices.to(self.key_buffer.device)
        used = slice(self.start, self.start + self.length)
        kept = len(index)
        for buffer in (self.key_buffer, self.value_buffer):
            buffer[:kept, :, used] = buffer[: self.rows, :, used].index_select(0, index)
        self.rows = kept
        self._publish()

    def remove_rows(self, holes: Sequence[int], movers: Sequence[int], kept: int) -> None:
        """Fill the rows ``holes`` with the rows ``movers`` and keep the first ``kept`` rows.

        A server's rows finish one or two at a time; moving only the last rows into the
        leavers' places copies those few rows, where keeping every row in order
        (:meth:`batch_select_indices`) copies the whole cache at every retirement.
        """
        if not self.is_initialized:
            return
        assert self.key_buffer is not None and self.value_buffer is not None
        if holes:
            used = slice(self.start, self.start + self.length)
            into = torch.tensor(list(holes), device=self.key_buffer.device)
            source = torch.tensor(list(movers), device=self.key_buffer.device)
            for buffer in (self.key_buffer, self.value_buffer):
                buffer[:, :, used].index_copy_(0, into, buffer[:, :, used].index_select(0, source))
        self.rows = kept
        self._publish()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if not self.is_initialized:
            return
        assert self.key_buffer is not None and self.value_buffer is not None
        self.key_buffer = self.key_buffer[: self.rows].repeat_interleave(repeats, dim=0)
        self.value_buffer = self.value_buffer[: self.rows].repeat_interleave(repeats, dim=0)
        self.rows *= repeats
        self._publish()

    def append_rows(self, other: PreallocatedLayer) -> None:
        """Add ``other``'s rows after these, right-aligned with them; the shorter side is left-padded with zeros.

        Only the new rows (and, when they are wider, the new leading columns) are written: the
        rows already here stay where they are.
        """
        assert other.key_buffer is not None and other.value_buffer is not None
        if not self.is_initialized:
            self.dtype, self.device = other.dtype, other.device
            rows, capacity = max(other.rows, self.row_limit), max(self.capacity_hint, other.length)
            self.key_buffer = _zeros(other.key_buffer, rows, capacity)
            self.value_buffer = _zeros(other.value_buffer, rows, capacity)
            self.rows = self.start = self.length = 0
            self.is_initialized = True
        self._reserve(self.length, self.rows + other.rows)
        extra = max(0, other.length - self.length)  # columns to add on the left for wider new rows
        if extra:
            self._reserve_left(extra)
            self.start -= extra
            self.length += extra
        assert self.key_buffer is not None and self.value_buffer is not None
        end = self.start + self.length
        pad = slice(self.start, end - other.length)
        new_rows = slice(self.rows, self.rows + other.rows)
        for buffer, source in ((self.key_buffer, other.key_buffer), (self.value_buffer, other.value_buffer)):
            # Padding must be zeros, not stale values: a masked-out NaN would still poison attention (0 * NaN).
            buffer[: self.rows, :, self.start : self.start + extra] = 0
            buffer[new_rows, :, pad] = 0
            buffer[new_rows, :, end - other.length : end] = source[
                : other.rows, :, other.start : other.start + other.length
            ]
        self.rows += other.rows
        self._publish()

    def _reserve_left(self, columns: int) -> None:
        """Make ``start`` at least ``columns``, so that many columns fit before the used ones."""
        assert self.key_buffer is not None and self.value_buffer is not None
        if self.start >= columns:
            return
        capacity = self.key_buffer.shape[-2] + columns
        for name in ("key_buffer", "value_buffer"):
            buffer = getattr(self, name)
            out = _zeros(buffer, buffer.shape[0], capacity)
            used = slice(self.start, self.start + self.length)
            out[: self.rows, :, columns : columns + self.length] = buffer[: self.rows, :, used]
            setattr(self, name, out)
        self.start = columns

    def drop_leading(self, columns: int) -> None:
        """Forget the first ``columns`` used columns (padding in every row): a shift of ``start``."""
        if not self.is_initialized or columns <= 0:
            return
        columns = min(columns, self.length)
        self.start += columns
        self.length -= columns
        self._publish()

    @property
    def allocated_columns(self) -> int:
        return 0 if self.key_buffer is None else int(self.key_buffer.shape[-2])


class PreallocatedCache(Cache):
    """A cache of :class:`PreallocatedLayer`, one per decoder layer, reserving ``capacity`` columns."""

    def __init__(self, n_layers: int, capacity: int = 0, row_limit: int = 0) -> None:
        """``row_limit``: rows worth reserving when rows are appended (a batcher's ``max_rows``)."""
        super().__init__(layers=[PreallocatedLayer(capacity) for _ in range(n_layers)])
        for layer in self.preallocated:
            layer.row_limit = row_limit

    @property
    def preallocated(self) -> list[PreallocatedLayer]:
        return [layer for layer in self.layers if isinstance(layer, PreallocatedLayer)]

    @property
    def rows(self) -> int:
        return self.preallocated[0].rows

    @property
    def width(self) -> int:
        """Used columns (the same in every layer once a forward pass has run)."""
        return self.preallocated[0].get_seq_length()

    @property
    def allocated_bytes(self) -> int:
        total = 0
        for layer in self.preallocated:
            for buffer in (layer.key_buffer, layer.value_buffer):
                if buffer is not None:
                    total += buffer.numel() * buffer.element_size()
        return total

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the rows in ``index`` (in that order)."""
        self.batch_select_indices(index)

    def remove_rows(self, leaving: Collection[int]) -> list[int]:
        """Drop the rows ``leaving``, moving the last remaining rows into their places.

        Returns, for each remaining row position, the row it held before (the caller reorders
        its own per-row state the same way). Copies as many rows as leave, not the whole cache.
        """
        rows = self.rows
        kept = rows - len(leaving)
        order = [i for i in range(kept)]
        holes = sorted(i for i in leaving if i < kept)
        movers = [i for i in range(kept, rows) if i not in leaving]
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        for layer in self.preallocated:
            layer.remove_rows(holes, movers, kept)
        return order

    def drop_leading(self, columns: int) -> None:
        for layer in self.preallocated:
            layer.drop_leading(columns)

    def append_rows(self, other: PreallocatedCache) -> None:
        """Add ``other``'s rows after these, right-aligned (the rows already here are not copied)."""
        for layer, source in zip(self.preallocated, other.preallocated, strict=True):
            layer.append_rows(source)

    def reserve(self, capacity: int) -> None:
        """Columns the next regrowth should reserve at least (the batch's longest possible row)."""
        for layer in self.preallocated:
            layer.capacity_hint = max(layer.capacity_hint, capacity)


def supports_preallocation(model_config: Any) -> bool:
    """Whether every decoder layer is plain full attention (what :class:`PreallocatedCache` holds)."""
    try:
        layer_types, _ = get_layer_types_and_kwargs(model_config.get_text_config(decoder=True))
    except Exception:  # an unusual config shape: transformers' own cache knows it best
        log.debug("cannot read the layer types of %s; using the dynamic cache", type(model_config).__name__)
        return False
    return bool(layer_types) and all(kind == "full_attention" for kind in layer_types)


def new_cache(model: Any, n_layers: int, capacity: int, preallocate: bool = True) -> Cache:
    """A preallocated cache for ``capacity`` columns, or transformers' dynamic one where it cannot be used.

    ``model`` is the transformers model (its config decides); ``preallocate=False`` gives the
    dynamic cache (what benchmarks compare against).
    """
    config = model.config
    if preallocate and supports_preallocation(config):
        return PreallocatedCache(n_layers, capacity)
    return DynamicCache(config=config)


def merge(first: PreallocatedCache, second: PreallocatedCache, capacity: int = 0) -> PreallocatedCache:
    """A new cache holding ``first``'s rows then ``second``'s, right-aligned (see :meth:`PreallocatedLayer.append_rows`)."""
    merged = PreallocatedCache(len(first.layers), capacity)
    merged.append_rows(first)
    merged.append_rows(second)
    return merged


def _with_columns(shape: torch.Size, columns: int) -> tuple[int, ...]:
    return (shape[0], shape[1], columns, *shape[3:])


def _zeros(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    return like.new_zeros((rows, like.shape[1], columns, *like.shape[3:]))
