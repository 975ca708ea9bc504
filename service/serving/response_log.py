"""Every served response stored before the client gets its last byte: a writer thread with group commits.

Requests hand their :class:`ServedResponse` to :meth:`ResponseLog.store` and wait for the
commit; the writer thread takes whatever is queued (up to ``max_batch``) and stores it in
one transaction, so under load one commit carries many responses. A response id is stored
once (``record_responses`` skips ids already stored, so a retried commit cannot double it).
:meth:`close` drains the queue before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from db.store import Store
from engine.errors import SteerLabError
from service.deployments import ServedResponse, record_responses

log = logging.getLogger(__name__)

_Done = Callable[[BaseException | None], None]


@dataclass
class _Pending:
    row: ServedResponse
    done: _Done


class ResponseLog:
    def __init__(self, store: Store, max_batch: int = 256, retries: int = 3) -> None:
        self._store = store
        self._max_batch = max_batch
        self._retries = retries
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="steerlab-response-log", daemon=True)
        self._closed = False
        self.commits = 0  # transactions so far (the benchmark reports responses per commit)
        self.stored = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: ServedResponse, done: _Done) -> None:
        """Queue ``row``; ``done`` runs on the writer thread with None once stored, or the error."""
        if self._closed:
            done(RuntimeError("the response log is closed"))
            return
        self._queue.put(_Pending(row, done))

    async def store(self, row: ServedResponse) -> None:
        """Store ``row`` and return once it is committed (raises what the store raised)."""
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if committed.done():
                return
            if error is None:
                committed.set_result(None)
            else:
                committed.set_exception(error)

        self.submit(row, lambda error: _call_soon(loop, settle, error))
        await committed

    def close(self, timeout: float = 30.0) -> None:
        """Store everything queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            ending = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    ending = True
                    break
                batch.append(item)
            self._commit(batch)
            if ending:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        error = self._record(batch)
        if error is not None and len(batch) > 1:
            # One bad row must not fail the requests it shares a commit with: store them one by one.
            for pending in batch:
                self._commit([pending])
            return
        if error is None:
            self.commits += 1
            self.stored += len(batch)
        for pending in batch:
            pending.done(error)

    def _record(self, batch: list[_Pending]) -> BaseException | None:
        """Store ``batch`` in one transaction, again after a transient failure (a locked database)."""
        for attempt in range(self._retries):
            try:
                record_responses(self._store, [p.row for p in batch])
                return None
            except SteerLabError as exc:  # the row itself is refused: trying again changes nothing
                log.warning("Storing %s served responses was refused: %s", len(batch), exc)
                return exc
            except Exception as exc:
                log.warning("Storing %s served responses failed (try %s): %s", len(batch), attempt + 1, exc)
                if attempt + 1 == self._retries:
                    return exc
                time.sleep(0.2 * (attempt + 1))
        return None


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[[BaseException | None], None], error: BaseException | None
) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(callback, error)
