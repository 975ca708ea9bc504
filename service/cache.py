"""A small in-process cache of derived figures, keyed by the store's data version.

Compare, the report and the exports recompute bootstraps over every vote and score; at
team scale that is seconds. A result is kept with the data version it was computed from
(see ``db.repository.data_version``: votes, outputs, scores, the definition), and reused
only while the store still has that version, so a cached figure is never stale: any
vote, output, score or definition change, from this process or another host, misses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ENTRIES = 64

_entries: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()
_lock = threading.Lock()


def cached(key: Hashable, version: Hashable, compute: Callable[[], T]) -> T:
    """The value stored under ``key`` for ``version``, else ``compute()`` (stored for next time)."""
    with _lock:
        hit = _entries.get(key)
        if hit is not None and hit[0] == version:
            _entries.move_to_end(key)
            value: T = hit[1]
            return value
    value = compute()  # outside the lock: other experiments' pages need not wait
    with _lock:
        _entries[key] = (version, value)
        _entries.move_to_end(key)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)
    return value


def clear() -> None:
    """Forget every cached value (benchmarks measure cold computations with it)."""
    with _lock:
        _entries.clear()
