"""Reference-based scorers: BLEU and chrF (sacrebleu) for style transfer, exact match and
token F1 (SQuAD-style normalisation) for question answering.

They need the experiment's ``references`` (one or more acceptable outputs per prompt).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import Field

from engine.declaration import Settings, choice
from engine.errors import SteerLabError
from engine.scorers.base import Scorer

METRICS = ("bleu", "chrf", "exact_match", "token_f1")


def normalise_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised reference, or starts with one
    followed by a word boundary (generations run on past the answer)."""
    got = normalise_answer(prediction)
    for ref in references:
        want = normalise_answer(ref)
        if got == want or got.startswith(want + " "):
            return 1.0
    return 0.0


def token_f1(prediction: str, references: Sequence[str]) -> float:
    best = 0.0
    got = normalise_answer(prediction).split()
    for ref in references:
        want = normalise_answer(ref).split()
        common = sum((Counter(got) & Counter(want)).values())
        if common:
            precision, recall = common / len(got), common / len(want)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


class ReferenceSettings(Settings):
    metric: Annotated[str, choice(METRICS)] = Field(
        description="bleu or chrf (style transfer), exact_match or token_f1 (question answering)."
    )


@dataclass(frozen=True)
class ReferenceScorer(Scorer):
    kind = "reference"
    summary = "BLEU or chrF against references (sacrebleu), or exact match / token F1 for question answering."
    needs_references: ClassVar[bool] = True
    settings = ReferenceSettings

    name: str
    metric: str

    @classmethod
    def from_settings(cls, name: str, settings: ReferenceSettings) -> ReferenceScorer:
        return cls(name, settings.metric)

    def score(self, texts: Sequence[str], references: Sequence[Sequence[str]] | None = None) -> list[float]:
        if references is None:
            raise SteerLabError(
                f"Scorer '{self.name}' ({self.metric}) needs references; add a 'references' list to the experiment."
            )
        if self.metric in ("bleu", "chrf"):
            import sacrebleu

            function = sacrebleu.sentence_bleu if self.metric == "bleu" else sacrebleu.sentence_chrf
            return [float(function(t, list(refs)).score) for t, refs in zip(texts, references, strict=True)]
        function_qa = exact_match if self.metric == "exact_match" else token_f1
        return [function_qa(t, refs) for t, refs in zip(texts, references, strict=True)]
