"""One request's row in the continuous batcher, seen from the event loop.

The batcher calls ``on_token``/``on_done`` on its scheduler thread; they only hand the
value to the loop (``call_soon_threadsafe``), so the scheduler never waits on HTTP.
:func:`answer` turns the tokens into text pieces (cut at stop strings) and ends with an
:class:`Outcome`; leaving it early (the client went away) cancels the row, which then
leaves the batch at its next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from engine.continuous import ContinuousBatcher, RowHandle, RowRequest, RowResult
from engine.errors import SteerLabError
from service.serving.errors import ApiError
from service.serving.text_stream import TextStream

# The engine's reasons as the OpenAI API names them; a row whose logits broke down (an
# absurd coefficient) ends early like a stop, and is stored as "non_finite".
_OPENAI_REASONS = {"stop": "stop", "length": "length", "non_finite": "stop"}


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str  # as the client sees it: "stop" | "length"
    stored_reason: str  # as stored: the engine's reason ("stop" also for a stop string; "cancelled": the client left)
    prompt_tokens: int
    completion_tokens: int
    first_token_seconds: float  # request received -> first token, on the event loop
    latency_seconds: float  # request received -> last token


class RowRun:
    def __init__(self, batcher: ContinuousBatcher, request: RowRequest) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[int | RowResult] = asyncio.Queue()
        self.abandoned = False  # the client went away: the row was cancelled for it
        self.prompt_tokens = len(request.prompt)
        self.tokens = 0  # generated so far, as the loop has received them
        self.first_token_at = 0.0  # perf_counter() when the first one arrived
        try:
            self.handle: RowHandle = batcher.submit(request, self._on_token, self._on_done)
        except SteerLabError as exc:
            raise ApiError(503, str(exc), code="server_busy") from None

    def _on_token(self, token: int) -> None:
        self._deliver(token)

    def _on_done(self, result: RowResult) -> None:
        self._deliver(result)

    def _deliver(self, item: int | RowResult) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the loop has closed (shutdown): nobody reads this row any more
            self.handle.cancel()

    async def next(self) -> int | RowResult:
        item = await self._items.get()
        if isinstance(item, int):
            self.tokens += 1
            self.first_token_at = self.first_token_at or time.perf_counter()
        return item

    def abandon(self) -> None:
        """The client left: the row leaves the batch at its next step."""
        self.abandoned = True
        self.handle.cancel()


async def answer(
    run: RowRun, decode: Callable[[Sequence[int]], str], stops: Sequence[str], received: float
) -> AsyncGenerator[str | Outcome, None]:
    """Text pieces of ``run`` as they become safe to send, then the :class:`Outcome`. Raises :class:`ApiError`."""
    text = TextStream(decode, stops)
    first_token = 0.0
    try:
        while True:
            item = await run.next()
            if isinstance(item, int):
                if not first_token:
                    first_token = time.perf_counter()
                piece = text.add(item)
                if text.stopped:
                    run.handle.cancel()  # the stop string ended the answer; free the row now
                if piece:
                    yield piece
                continue
            result = item
            break
    finally:
        run.handle.cancel()  # no-op when it finished; else (the client left) the row leaves the batch
    ended = time.perf_counter()
    if text.stopped:
        reason, stored, used = "stop", "stop", text.token_count
    elif result.finish_reason in _OPENAI_REASONS:
        reason, stored, used = _OPENAI_REASONS[result.finish_reason], result.finish_reason, len(result.tokens)
    elif run.abandoned:  # nobody reads it; stored as "cancelled" with what was written (an A/B signal)
        reason, stored, used = "stop", "cancelled", len(result.tokens)
    elif result.finish_reason == "error":
        raise ApiError(
            500, result.error or "Generation failed inside the model; the request was ended.", code="generation_failed"
        )
    else:  # cancelled without a stop string: the server is shutting down
        raise ApiError(503, "The server is shutting down and ended this request; send it again.", code="shutting_down")
    last = text.finish()
    if last:
        yield last
    yield Outcome(
        text.text,
        reason,
        stored,
        result.prompt_tokens,
        used,
        (first_token or ended) - received,
        ended - received,
    )
