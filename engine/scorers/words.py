"""Word-list scorer: the share of a text's words that are on a list.

Words match whole and case-blind; an entry ending in ``*`` matches any word starting
with it (``cr*`` matches cry, cried, crying), and an entry with spaces matches that
phrase (each phrase counts as one hit).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from engine.declaration import Settings, texts
from engine.scorers.base import Scorer

_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordListSettings(Settings):
    words: Annotated[tuple[str, ...], texts(lowercase=True, what="word", verb="list")] = Field(
        description="Words (case-blind); 'cr*' matches any word starting with 'cr', 'all alone' a phrase.",
        examples=[["sad", "cry*", "all alone"]],
    )


@dataclass(frozen=True)
class WordListScorer(Scorer):
    kind = "words"
    summary = "Share of words in the output that are on a word list (per generation)."
    settings = WordListSettings

    name: str
    words: tuple[str, ...]

    @classmethod
    def from_settings(cls, name: str, settings: WordListSettings) -> WordListScorer:
        return cls(name, settings.words)

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
