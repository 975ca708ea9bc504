"""Continuous batching: requests join a decoding batch at its next step and leave when they finish.

One scheduler thread owns the model. Each turn it admits waiting requests (up to
``max_rows`` running), prefills them as one group with their own steering, chooses their
first tokens and merges their keys and values into the running batch's cache; then it runs
one decode step for every running row, hands each new token to the row's ``on_token`` and
retires the rows that finished. A row's text does not depend on which rows share its batch:
rows are right-aligned in the cache with padding columns masked out, every row has its own
position ids (its count of real tokens), its own seeded random stream and its own edits, so
greedy rows give exactly what :func:`engine.generation.generate` gives for the row alone.

Rows carry their own steering edits. The decode steps of one row composition share one
:class:`engine.steering.BatchSteering` (built when rows join or leave, not per step), whose
additive edits are one ``[rows, hidden]`` delta table per layer. Edits whose state depends
on the prompt (``begin`` overridden, or ``refresh_every`` > 0) must be one object per request:
``begin`` runs at admission with no hooks attached, ``refresh`` at the row's own count.

The cache keeps only columns some running row still uses (leading all-padding columns are
dropped when rows leave) and is released when the batch empties, so a long-running server's
memory follows its current load. An exception inside a step ends that step's rows with
``finish_reason="error"`` and one sentence; the scheduler keeps serving. Library code: it
logs, and reports through the callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.decoding import Decoding
from engine.errors import SteerLabError
from engine.generation import broken_rows, forward, left_pad, left_pad_flags, positions_from_mask, sampling_distribution
from engine.kv_cache import PreallocatedCache, supports_preallocation
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel
from engine.steering import BatchSteering

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "cancelled", "non_finite", "error")


@dataclass(frozen=True)
class RowRequest:
    """One request: its rendered prompt, how to decode it and how to steer it."""

    prompt: tuple[int, ...]  # token ids, already rendered
    decoding: Decoding
    seed: int = 0  # the row's own torch.Generator seed (sampling only)
    edits: tuple[PreparedEdit, ...] = ()  # () = the plain model, bitwise equal to an unsteered run
    assistant: tuple[bool, ...] | None = None  # per prompt token: assistant content (assistant scope)
    stop_token_ids: frozenset[int] = frozenset()  # besides the model's EOS when decoding.stop_at_eos


@dataclass(frozen=True)
class RowResult:
    """What one request generated, why it ended and how long each part took."""

    tokens: tuple[int, ...]  # generated ids, without the prompt and without the EOS/stop id
    finish_reason: str  # one of FINISH_REASONS
    error: str = ""  # one sentence when finish_reason == "error"
    prompt_tokens: int = 0
    queued_seconds: float = 0.0  # submit -> admitted
    first_token_seconds: float = 0.0  # submit -> first token
    seconds: float = 0.0  # submit -> done


class RowHandle:
    """The caller's side of a submitted row: cancel it, or ask whether it has finished."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._done = threading.Event()

    def cancel(self) -> None:
        """Ask the row to leave; it ends at the scheduler's next step with ``"cancelled"``."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the row finished (``on_done`` has run); False on timeout."""
        return self._done.wait(timeout)


@dataclass(eq=False)
class _Row:
    """The scheduler's state of one row (touched only by the scheduler thread after submit)."""

    request: RowRequest
    handle: RowHandle
    on_token: Callable[[int], None]
    on_done: Callable[[RowResult], None]
    submitted: float
    stops: frozenset[int]
    generator: torch.Generator | None = None
    admitted: float = 0.0
    first_token: float = 0.0
    tokens: list[int] = field(default_factory=list)
    pending: int = 0  # the last chosen token, fed to the next decode step
    stateful: tuple[PreparedEdit, ...] = ()

    @property
    def length(self) -> int:
        """Real tokens of this row in the cache: the prompt and every token fed back so far."""
        return len(self.request.prompt) + max(0, len(self.tokens) - 1)

    @property
    def remaining(self) -> int:
        return self.request.decoding.max_new_tokens - len(self.tokens)


class ContinuousBatcher:
    """Serve many generation requests on one model, batching them continuously (see the module doc)."""

    def __init__(
        self, model: LoadedModel, max_rows: int = 64, max_waiting: int = 4096, *, prefill_tokens: int = 16384
    ) -> None:
        """``prefill_tokens``: padded prompt tokens one admission group may prefill (at least one row
        is always admitted); it bounds the pause a burst of long prompts puts on the running rows."""
        if max_rows < 1 or max_waiting < 1:
            raise SteerLabError(
                f"max_rows ({max_rows}) and max_waiting ({max_waiting}) must both be at least 1; raise them."
            )
        if not supports_preallocation(model.model.config):
            raise SteerLabError(
                f"Model '{model.model_id}' has sliding-window or recurrent layers, which continuous batching "
                "does not support yet; serve a model whose layers all use full attention."
            )
        self.model = model
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self.prefill_tokens = prefill_tokens
        self._cond = threading.Condition()
        self._waiting: deque[_Row] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        # Owned by the scheduler thread.
        self._running: list[_Row] = []
        self._cache: PreallocatedCache | None = None
        self._steering: BatchSteering | None = None  # for the current composition of running rows
        self._decode_masks: PositionMasks | None = None
        self._steps = 0
        self._generated = 0
        self._stats_running = 0
        self._stats_cache_tokens = 0
        self._stats_cache_bytes = 0

    # ---- the caller's side (any thread)

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._serve, name="steerlab-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking requests; running and waiting rows end with ``"cancelled"``."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the batcher's scheduler did not stop within %.1f s", timeout)
            return
        # Never started: nothing runs, so the waiting rows are ended here.
        with self._cond:
            left = list(self._waiting)
            self._waiting.clear()
        for row in left:
            self._finish(row, "cancelled")

    def submit(
        self, request: RowRequest, on_token: Callable[[int], None], on_done: Callable[[RowResult], None]
    ) -> RowHandle:
        """Queue a request; ``on_token``/``on_done`` run on the scheduler thread (quick, never raising)."""
        _check(request)
        decoding = request.decoding
        stops = (self.model.eos_token_ids if decoding.stop_at_eos else frozenset()) | request.stop_token_ids
        row = _Row(request, RowHandle(), on_token, on_done, time.perf_counter(), frozenset(stops))
        with self._cond:
            if self._closed:
                raise SteerLabError("The batcher is closed, so it takes no new requests; start a new one.")
            if len(self._waiting) >= self.max_waiting:
                raise SteerLabError(
                    f"The queue is full ({self.max_waiting} requests are waiting); retry the request later."
                )
            self._waiting.append(row)
            self._cond.notify_all()
        return row.handle

    def stats(self) -> dict[str, float]:
        with self._cond:
            waiting = len(self._waiting)
        return {
            "running": float(self._stats_running),
            "waiting": float(waiting),
            "steps": float(self._steps),
            "generated_tokens": float(self._generated),
            "cache_tokens": float(self._stats_cache_tokens),
            "cache_bytes": float(self._stats_cache_bytes),
        }

    # ---- the scheduler thread

    def _serve(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._closed:
                        break
                    admitted = self._next_group()
                with self.model.lock, torch.no_grad():
                    if admitted:
                        self._admit(admitted)
                    if self._running:
                        self._decode_step()
                self._update_stats()
        finally:
            with self._cond:
                left = list(self._waiting)
                self._waiting.clear()
            for row in [*self._running, *left]:
                self._finish(row, "cancelled")
            self._running = []
            self._drop_cache()
            self._update_stats()

    def _next_group(self) -> list[_Row]:
        """Waiting rows to admit now: while there is room, and the group's padded prompt fits the budget."""
        room = self.max_rows - len(self._running)
        group: list[_Row] = []
        width = 0
        while self._waiting and len(group) < room:
            wider = max(width, len(self._waiting[0].request.prompt))
            if group and wider * (len(group) + 1) > self.prefill_tokens:
                break
            group.append(self._waiting.popleft())
            width = wider
        return group

    def _admit(self, rows: list[_Row]) -> None:
        now = time.perf_counter()
        group: list[_Row] = []
        for row in rows:
            row.admitted = now
            if row.handle.cancelled:
                self._finish(row, "cancelled")
            elif row.request.decoding.max_new_tokens <= 0:
                self._finish(row, "length")
            elif self._begin(row):
                group.append(row)
        if not group:
            return
        try:
            logits, cache = self._prefill(group)
        except Exception as exc:
            log.exception("prefill of %d admitted rows failed", len(group))
            for row in group:
                self._finish(row, "error", _sentence(exc))
            return
        keep = self._choose(group, logits)
        if not keep:
            return
        staying = [group[i] for i in keep]
        if len(keep) < len(group):
            cache.select_rows(torch.tensor(keep, device=self.model.device))
            cache.drop_leading(cache.width - max(r.length for r in staying))
        capacity = max(r.length + r.remaining for r in [*self._running, *staying])
        if self._cache is None:
            self._cache = PreallocatedCache(self.model.n_layers, capacity, row_limit=self.max_rows)
        self._cache.reserve(capacity)
        self._cache.append_rows(cache)  # writes only the new rows: the running ones stay in place
        self._running.extend(staying)
        self._steering = None  # the composition changed

    def _begin(self, row: _Row) -> bool:
        """Set up the row's random stream and prompt-dependent edits; False when that failed (row ended)."""
        request = row.request
        if request.decoding.do_sample:
            row.generator = torch.Generator(device=self.model.device).manual_seed(int(request.seed))
        unique = {id(e): e for e in request.edits}  # by identity: edits need not be hashable
        row.stateful = tuple(e for e in unique.values() if _is_stateful(e))
        try:
            for edit in row.stateful:
                edit.begin(self.model, [list(request.prompt)])
        except Exception as exc:
            log.exception("an edit's begin failed for one row")
            self._finish(row, "error", _sentence(exc))
            return False
        return True

    def _prefill(self, group: list[_Row]) -> tuple[torch.Tensor, PreallocatedCache]:
        model = self.model
        prompts = [list(r.request.prompt) for r in group]
        ids, mask = left_pad(model, prompts)
        steering = BatchSteering(model, [r.request.edits for r in group])
        if not steering.is_empty:
            flags = None
            if any(r.request.assistant is not None for r in group):
                marks = [r.request.assistant or (False,) * len(r.request.prompt) for r in group]
                flags = left_pad_flags(model, marks, mask.shape[1])
            steering.masks = PositionMasks.prompt_only(mask, flags)
        cache = PreallocatedCache(model.n_layers, mask.shape[1])
        with steering.attached() if not steering.is_empty else nullcontext():
            result = forward(model, ids, mask, positions_from_mask(mask), past=cache)
        return result.logits[:, -1, :], cache

    def _decode_step(self) -> None:
        cancelled = [r for r in self._running if r.handle.cancelled]
        if cancelled:
            self._retire(cancelled, "cancelled")
        if not self._running:
            return
        rows = self._running
        try:
            self._refresh_due()
            rows = self._running
            if not rows:
                return
            cache = self._cache
            assert cache is not None
            if self._steering is None:
                self._steering = BatchSteering(self.model, [r.request.edits for r in rows])
                generated = torch.ones((len(rows), 1), dtype=torch.bool, device=self.model.device)
                self._decode_masks = PositionMasks(torch.zeros_like(generated), generated)
                self._steering.masks = self._decode_masks
            steering = self._steering
            device = self.model.device
            width = cache.width
            lengths = torch.tensor([r.length for r in rows], device=device)
            columns = torch.arange(width + 1, device=device)
            mask = (columns[None, :] >= (width - lengths)[:, None]).long()
            ids = torch.tensor([[r.pending] for r in rows], dtype=torch.long, device=device)
            with steering.attached() if not steering.is_empty else nullcontext():
                result = forward(self.model, ids, mask, lengths[:, None], past=cache)
            self._steps += 1
            self._choose(rows, result.logits[:, -1, :], decode=True)
        except Exception as exc:
            log.exception("a decode step of %d rows failed", len(rows))
            self._retire(list(rows), "error", _sentence(exc))

    def _refresh_due(self) -> None:
        """Refresh the stateful edits that are due; a row whose refresh fails ends alone."""
        failed: list[tuple[_Row, str]] = []
        for row in self._running:
            try:
                for edit in row.stateful:
                    if edit.refresh_every and len(row.tokens) % edit.refresh_every == 0:
                        edit.refresh(self.model, [[*row.request.prompt, *row.tokens]])
            except Exception as exc:
                log.exception("an edit's refresh failed for one row")
                failed.append((row, _sentence(exc)))
        for row, sentence in failed:
            self._retire([row], "error", sentence)

    def _choose(self, rows: list[_Row], logits: torch.Tensor, decode: bool = False) -> list[int]:
        """Choose each row's next token, emit it, finish rows that are done; the indexes of rows that go on."""
        broken_mask = broken_rows(logits)
        broken = broken_mask.tolist()
        chosen = _choose_tokens(rows, logits, broken_mask)
        now = time.perf_counter()
        going_on: list[int] = []
        finished: list[tuple[_Row, str]] = []
        for i, (row, token) in enumerate(zip(rows, chosen, strict=True)):
            if not row.first_token:
                row.first_token = now
            if broken[i]:
                finished.append((row, "non_finite"))
                continue
            if token in row.stops:
                finished.append((row, "stop"))
                continue
            row.tokens.append(token)
            row.pending = token
            self._generated += 1
            _call(row.on_token, token)
            if row.remaining <= 0:
                finished.append((row, "length"))
            else:
                going_on.append(i)
        if decode:
            if finished:
                self._retire([r for r, _ in finished], None, reasons={id(r): why for r, why in finished})
        else:
            for row, why in finished:
                self._finish(row, why)
        return going_on

    def _retire(
        self, rows: Sequence[_Row], reason: str | None, error: str = "", reasons: dict[int, str] | None = None
    ) -> None:
        """End running rows and drop them from the cache (and the cache's now-unused leading columns)."""
        leaving = {id(r) for r in rows}
        for row in rows:
            self._finish(row, reason or (reasons or {})[id(row)], error)
        self._steering = None
        if all(id(r) in leaving for r in self._running):
            self._running = []
            self._drop_cache()
            return
        cache = self._cache
        assert cache is not None
        # The last rows move into the leavers' places (a few rows copied, not the whole cache):
        # rows leave one or two at a time in a server, so this runs at most steps.
        order = cache.remove_rows([i for i, r in enumerate(self._running) if id(r) in leaving])
        self._running = [self._running[i] for i in order]
        cache.drop_leading(cache.width - max(r.length for r in self._running))

    def _drop_cache(self) -> None:
        self._cache = None
        self._steering = None
        self._decode_masks = None

    def _finish(self, row: _Row, reason: str, error: str = "") -> None:
        if row.handle.done:
            return
        now = time.perf_counter()
        start = row.submitted
        result = RowResult(
            tokens=tuple(row.tokens),
            finish_reason=reason,
            error=error,
            prompt_tokens=len(row.request.prompt),
            queued_seconds=(row.admitted or now) - start,
            first_token_seconds=(row.first_token - start) if row.first_token else 0.0,
            seconds=now - start,
        )
        _call(row.on_done, result)
        row.handle._done.set()

    def _update_stats(self) -> None:
        self._stats_running = len(self._running)
        cache = self._cache
        self._stats_cache_tokens = 0 if cache is None else cache.rows * cache.width
        self._stats_cache_bytes = 0 if cache is None else cache.allocated_bytes


def _choose_tokens(rows: Sequence[_Row], logits: torch.Tensor, broken: torch.Tensor) -> list[int]:
    """Greedy argmax, or a draw from the row's own generator; rows that sample alike are filtered together."""
    # A broken row is ended without its token; flat logits keep NaN out of the draws.
    if bool(broken.any()):
        logits = torch.where(broken[:, None], torch.zeros_like(logits), logits)
    chosen = logits.argmax(dim=-1).tolist()
    groups: dict[Decoding, list[int]] = {}
    for i, row in enumerate(rows):
        if row.generator is not None:
            groups.setdefault(row.request.decoding, []).append(i)
    for decoding, members in groups.items():
        index = torch.tensor(members, device=logits.device)
        probs = sampling_distribution(logits.index_select(0, index).float(), decoding)
        for position, i in enumerate(members):
            generator = rows[i].generator
            chosen[i] = int(torch.multinomial(probs[position], 1, generator=generator))
    return [int(t) for t in chosen]


def _check(request: RowRequest) -> None:
    if not request.prompt:
        raise SteerLabError("The prompt has no tokens; send at least one token to continue from.")
    if request.assistant is not None and len(request.assistant) != len(request.prompt):
        raise SteerLabError(
            f"The assistant flags have {len(request.assistant)} entries for a prompt of "
            f"{len(request.prompt)} tokens; give one flag per prompt token."
        )


def _is_stateful(edit: PreparedEdit) -> bool:
    return type(edit).begin is not PreparedEdit.begin or edit.refresh_every > 0


def _sentence(exc: BaseException) -> str:
    if isinstance(exc, SteerLabError):
        return str(exc)
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    return f"Generation failed inside the model ({type(exc).__name__}: {detail}); the request was ended."


def _call(callback: Callable[[Any], None], value: object) -> None:
    try:
        callback(value)
    except Exception:
        # The contract says callbacks never raise; if one does, the scheduler must keep serving.
        log.exception("a batcher callback raised")
