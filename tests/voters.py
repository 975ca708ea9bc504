"""What a rater's process runs in the tests that vote from several processes at once.

Kept apart from the test modules, which import the model code: a process started with
"spawn" imports its target's module, and this one needs only the store and the rating queue.
"""

from __future__ import annotations

from typing import Any

from db.store import Store
from engine.errors import SteerLabError
from service.rating import record_vote


def vote_at_the_barrier(
    url: str, experiment: str, rater: str, left: int, right: int, choice: str, barrier: Any, results: Any
) -> None:
    """Open the store, wait until every process has, then vote; put ``stored`` or the refusal on ``results``."""
    try:
        store = Store(url)  # its own connection, like another tab's server session
    except Exception as exc:
        barrier.abort()  # the others must not wait for this one for ever
        results.put(f"could not open the store: {exc}")
        return
    barrier.wait(timeout=120)
    try:
        record_vote(store, experiment, rater, left, right, choice)
        results.put("stored")
    except SteerLabError as exc:
        results.put(str(exc))
    finally:
        store.close()
