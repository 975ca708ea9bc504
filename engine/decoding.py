"""How new tokens are chosen: plain settings, kept apart from the decode loop in :mod:`engine.generation`.

Experiment definitions hold a :class:`Decoding`, and they are read and validated where
torch is not installed or not wanted (the store, the dashboard's forms); the loop that
uses it lives with torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decoding:
    """How new tokens are chosen."""

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1.0 = no nucleus cut
    stop_at_eos: bool = True  # benchmarks switch this off so every row runs the same length
