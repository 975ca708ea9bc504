"""Loaded models kept for reuse, least recently used first out.

A dashboard or worker that visits experiments on several models would otherwise keep every
one of them in memory. The cache holds ``STEERLAB_MODEL_CACHE_SIZE`` models (default 1,
read at every load so it can be changed while running). Evicting a model drops the cache's
reference and frees what nothing else holds (``torch.cuda.empty_cache`` on CUDA); whoever
still holds a :class:`~engine.models.LoadedModel` (a page mid-render, a test fixture) keeps
a working model: it is only no longer shared.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

from engine.errors import SteerLabError

logger = logging.getLogger(__name__)

CACHE_SIZE_ENV = "STEERLAB_MODEL_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 1

T = TypeVar("T")


def cache_size() -> int:
    raw = os.environ.get(CACHE_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_CACHE_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = -1
    if size < 1:
        raise SteerLabError(f"{CACHE_SIZE_ENV}='{raw[:20]}' is not a whole number of 1 or more; set it to 1 or more.")
    return size


class ModelCache(Generic[T]):
    """An LRU map from a load's key to its model, loading at most one model at a time."""

    def __init__(self, size: Callable[[], int] = cache_size) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached model for ``key``, or ``load()``'s after making room for it."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            # Room first: the old model's memory is freed before the new one is counted and loaded.
            self._shrink(self._size() - 1)
            value = load()
            self._entries[key] = value
            return value

    def loaded(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._shrink(0)

    def _shrink(self, keep: int) -> None:
        evicted = False
        while len(self._entries) > max(keep, 0):
            key, _ = self._entries.popitem(last=False)
            logger.info("model cache: evicting %s", key)
            evicted = True
        if evicted:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
