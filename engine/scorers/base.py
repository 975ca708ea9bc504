"""The shared interface of automatic scorers, and their registry.

A scorer turns each generated text into one number (higher = more of the behaviour).
Scorers register by ``kind`` when their module is imported, like steering methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from engine.fields import Where

_REGISTRY: dict[str, type[Scorer]] = {}


class Scorer(ABC):
    kind: ClassVar[str]
    summary: ClassVar[str]
    name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _REGISTRY[cls.kind] = cls

    @classmethod
    @abstractmethod
    def parse(cls, name: str, raw: Mapping[str, Any], where: Where) -> Scorer:
        """Validate the scorer's settings (``name`` and ``kind`` already taken out)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain data with ``name`` and ``kind``, such that parsing it gives this scorer back."""

    # Reference-based scorers (BLEU, exact match, ...) need the experiment's references.
    needs_references: ClassVar[bool] = False

    def check_available(self) -> None:
        """Raise SteerLabError if what the scorer needs (a model, a package) is missing."""
        return None

    @abstractmethod
    def score(self, texts: Sequence[str], references: Sequence[Sequence[str]] | None = None) -> list[float]:
        """One number per text; ``references[i]`` are the acceptable answers for ``texts[i]``."""


def registered_scorers() -> dict[str, type[Scorer]]:
    return dict(_REGISTRY)
