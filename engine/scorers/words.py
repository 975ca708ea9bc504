"""Word-list scorer: the share of a text's words that are on a list.

Words match whole and case-blind; an entry ending in ``*`` matches any word starting
with it (``cr*`` matches cry, cried, crying), and an entry with spaces matches that
phrase (each phrase counts as one hit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.fields import Where, as_list, as_str, check_keys, required
from engine.scorers.base import Scorer

_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class WordListScorer(Scorer):
    kind = "words"
    summary = "Share of words in the output that are on a word list (per generation)."

    name: str
    words: tuple[str, ...]

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any], where: Where) -> WordListScorer:
        check_keys(raw, ("words",), where)
        items = as_list(required(raw, "words", where), where.child("words"))
        words = tuple(as_str(w, where.child("words").child(i)).strip().lower() for i, w in enumerate(items))
        if not words:
            where.child("words").fail("is an empty list", "list at least one word")
        return cls(name, words)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "words": list(self.words)}

    def score(self, texts: Sequence[str], references: Sequence[Sequence[str]] | None = None) -> list[float]:
        return [self.rate(text) for text in texts]

    def rate(self, text: str) -> float:
        tokens = words_of(text)
        if not tokens:
            return 0.0
        return self.hits(tokens) / len(tokens)

    def hits(self, tokens: list[str]) -> int:
        exact = {w for w in self.words if " " not in w and not w.endswith("*")}
        prefixes = tuple(w[:-1] for w in self.words if w.endswith("*"))
        count = sum(1 for t in tokens if t in exact or (prefixes and t.startswith(prefixes)))
        joined = " " + " ".join(tokens) + " "
        for phrase in (w for w in self.words if " " in w):
            count += joined.count(" " + " ".join(words_of(phrase)) + " ")
        return count
