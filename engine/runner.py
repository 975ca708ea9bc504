"""Run work units (variant x prompt x sample) as batches that mix variants.

The caller prepares each variant once (its prompt tokens and its edits) and passes the
units still to do. Units are ordered prompt-major, so each batch carries many variants
of the same prompts; each finished batch is handed to ``on_batch`` (the store commits it
atomically) before the next starts, which is what makes a killed run resumable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.errors import RunCancelled
from engine.generation import generate_checked, row_seed
from engine.measure import PeakMemory
from engine.methods.base import PreparedEdit
from engine.models import LoadedModel
from engine.spec import GenerationSpec
from engine.steering import BatchSteering


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True, order=True)
class Unit:
    """One generation to make; ordering is prompt-major so batches mix variants."""

    prompt: int
    sample: int
    variant: int


@dataclass(frozen=True)
class PreparedVariant:
    name: str
    prompt_tokens: tuple[tuple[int, ...], ...]  # one entry per experiment prompt
    edits: tuple[PreparedEdit, ...]
    model: LoadedModel | None = None  # its own weights (adapter or fine-tune); None: the shared model
    # Per prompt, per prompt token: assistant content of a conversation (for the assistant
    # scope); empty when no prompt has assistant turns.
    assistant: tuple[tuple[bool, ...], ...] = ()

    def assistant_flags(self, prompt: int) -> tuple[bool, ...]:
        return self.assistant[prompt] if self.assistant else (False,) * len(self.prompt_tokens[prompt])


@dataclass(frozen=True)
class RowOutput:
    unit: Unit
    token_ids: tuple[int, ...]
    text: str
    seconds: float  # this row's equal share of its batch's wall time
    peak_memory_bytes: int  # peak of the batch it ran in
    non_finite: bool = False  # its logits broke down (inf/NaN, or flat from an overflow): stopped there


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    elapsed_seconds: float
    done_this_session: int

    @property
    def rate(self) -> float:
        """Units per second in this session."""
        return self.done_this_session / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


def plan_batches(
    units: Sequence[Unit], batch_size: int, group: Callable[[Unit], int] = lambda _u: 0
) -> list[list[Unit]]:
    """Prompt-major batches; units of different ``group`` (different weights) never share one."""
    groups: dict[int, list[Unit]] = {}
    for unit in sorted(units):
        groups.setdefault(group(unit), []).append(unit)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def run_units(
    model: LoadedModel,
    variants: Sequence[PreparedVariant],
    units: Sequence[Unit],
    generation: GenerationSpec,
    batch_size: int,
    on_batch: Callable[[list[RowOutput]], None],
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    already_done: int = 0,
) -> None:
    """Generate every unit; raises RunCancelled (after the last finished batch) when cancelled."""
    total = already_done + len(units)
    done = already_done
    started = time.perf_counter()
    if progress is not None:
        progress(Progress(done, total, 0.0, 0))

    def weights(unit: Unit) -> int:
        own = variants[unit.variant].model
        return 0 if own is None else id(own)

    for batch in plan_batches(units, batch_size, weights):
        if cancel is not None and cancel.is_set():
            raise RunCancelled()
        on_batch(run_batch(model, variants, batch, generation, cancel))
        done += len(batch)
        if progress is not None:
            progress(Progress(done, total, time.perf_counter() - started, done - already_done))


def run_batch(
    model: LoadedModel,
    variants: Sequence[PreparedVariant],
    batch: Sequence[Unit],
    generation: GenerationSpec,
    cancel: CancelFlag | None = None,
) -> list[RowOutput]:
    model = variants[batch[0].variant].model or model  # a batch shares one set of weights
    prompts = [variants[u.variant].prompt_tokens[u.prompt] for u in batch]
    seeds = [row_seed(generation.seed, u.prompt, u.sample) for u in batch]
    marked = any(variants[u.variant].assistant for u in batch)
    assistant = [variants[u.variant].assistant_flags(u.prompt) for u in batch] if marked else None
    steering = BatchSteering(model, [variants[u.variant].edits for u in batch])
    should_stop = cancel.is_set if cancel is not None else None
    edits = {id(e): e for u in batch for e in variants[u.variant].edits}
    own_before = {key: e.cost().get("seconds", 0.0) for key, e in edits.items()}
    with PeakMemory(model.device) as memory:
        started = time.perf_counter()
        generated = generate_checked(
            model,
            prompts,
            generation.decoding,
            seeds,
            None if steering.is_empty else steering,
            should_stop,
            on_step=memory.sample,
            assistant=assistant,
        )
        seconds = time.perf_counter() - started
    # Work an edit does for its own rows (nudging's gradient steps, a condition's gate) is
    # charged to those rows; the shared decoding time is split equally over all rows.
    own = {key: e.cost().get("seconds", 0.0) - own_before[key] for key, e in edits.items()}
    rows_of = {key: sum(1 for u in batch if any(id(e) == key for e in variants[u.variant].edits)) for key in edits}
    shared = max(seconds - sum(own.values()), 0.0) / len(batch)
    outputs = generated.tokens
    texts = model.tokenizer.batch_decode(outputs, skip_special_tokens=True)
    return [
        RowOutput(
            unit,
            tuple(ids),
            text,
            shared + sum(own[id(e)] / rows_of[id(e)] for e in variants[unit.variant].edits),
            memory.peak_bytes,
            broken,
        )
        for unit, ids, text, broken in zip(batch, outputs, texts, generated.non_finite, strict=True)
    ]
