"""The shared interface of automatic scorers, and their registry.

A scorer turns each generated text into one number (higher = more of the behaviour).
Scorers register by ``kind`` when their module is imported, like steering methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from engine.declaration import Settings
from engine.fields import Where

_REGISTRY: dict[str, type[Scorer]] = {}


class Scorer(ABC):
    kind: ClassVar[str]
    summary: ClassVar[str]
    # The one declaration of the scorer's settings (besides ``name`` and ``kind``):
    # validation, plain data and the JSON Schema of experiment files come from it.
    settings: ClassVar[type[Settings]]
    name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
                raise RuntimeError(f"two scorers are of kind {cls.kind!r}")
            if not (isinstance(getattr(cls, "settings", None), type) and issubclass(cls.settings, Settings)):
                raise TypeError(f"scorer kind {cls.kind!r} declares no settings (a Settings subclass)")
            _REGISTRY[cls.kind] = cls

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any], where: Where) -> Scorer:
        """Validate the scorer's settings (``name`` and ``kind`` already taken out)."""
        return cls.from_settings(name, cls.settings.checked(raw, where))

    @classmethod
    @abstractmethod
    def from_settings(cls, name: str, settings: Any) -> Scorer:
        """The scorer called ``name`` with these validated settings (an instance of ``cls.settings``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data with ``name`` and ``kind``, such that parsing it gives this scorer back."""
        values = {key: getattr(self, key) for key in self.settings.model_fields}
        return {"name": self.name, "kind": self.kind, **self.settings.model_construct(**values).plain()}

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
