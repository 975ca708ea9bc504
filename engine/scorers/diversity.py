"""Diversity: distinct-n, the share of a text's word n-grams that are unique (1.0 = no repetition)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.fields import Where, as_int, check_keys
from engine.scorers.base import Scorer
from engine.scorers.words import words_of


def distinct_n(text: str, n: int) -> float:
    tokens = words_of(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class DistinctScorer(Scorer):
    kind = "distinct"
    summary = "Distinct-n: unique word n-grams over all n-grams of the output."

    name: str
    n: int = 1

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any], where: Where) -> DistinctScorer:
        check_keys(raw, ("n",), where)
        return cls(name, as_int(raw.get("n", 1), where.child("n"), 1, 4))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "n": self.n}

    def score(self, texts: Sequence[str], references: Sequence[Sequence[str]] | None = None) -> list[float]:
        return [distinct_n(t, self.n) for t in texts]
