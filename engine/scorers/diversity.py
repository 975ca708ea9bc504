"""Diversity: distinct-n, the share of a text's word n-grams that are unique (1.0 = no repetition)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from engine.declaration import Settings, whole
from engine.scorers.base import Scorer
from engine.scorers.words import words_of


def distinct_n(text: str, n: int) -> float:
    tokens = words_of(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class DistinctSettings(Settings):
    n: Annotated[int, whole(1, 4)] = Field(1, description="Length of the word n-grams (1 to 4).")


@dataclass(frozen=True)
class DistinctScorer(Scorer):
    kind = "distinct"
    summary = "Distinct-n: unique word n-grams over all n-grams of the output."
    settings = DistinctSettings

    name: str
    n: int = 1

    @classmethod
    def from_settings(cls, name: str, settings: DistinctSettings) -> DistinctScorer:
        return cls(name, settings.n)

    def score(self, texts: Sequence[str], references: Sequence[Sequence[str]] | None = None) -> list[float]:
        return [distinct_n(t, self.n) for t in texts]
