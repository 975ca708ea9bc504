"""Any Hugging Face text-classification model by hub id: the probability of one label.

For users with network (or the model in their cache); the offline tests do not use it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from engine.declaration import TEXT, Settings
from engine.errors import SteerLabError
from engine.scorers.base import Scorer


@functools.cache
def _pipeline(model: str) -> Any:
    from transformers import pipeline

    try:
        return pipeline("text-classification", model=model, top_k=None, device="cpu")
    except (OSError, ValueError) as exc:
        raise SteerLabError(
            f"Classifier '{model}' could not be loaded ({str(exc).splitlines()[0]}); download it once with `hf download {model}` or pick another."
        ) from exc


class ClassifierSettings(Settings):
    model: Annotated[str, TEXT] = Field(description="Hugging Face id of a text-classification model.")
    label: Annotated[str, TEXT] = Field(description="The label whose probability is the score.")


@dataclass(frozen=True)
class ClassifierScorer(Scorer):
    kind = "classifier"
    summary = "Probability of a label under a Hugging Face text-classification model."
    settings = ClassifierSettings

    name: str
    model: str
    label: str

    @classmethod
    def from_settings(cls, name: str, settings: ClassifierSettings) -> ClassifierScorer:
        return cls(name, settings.model, settings.label)

    def score(self, texts: Sequence[str], references: Sequence[Sequence[str]] | None = None) -> list[float]:
        results = _pipeline(self.model)(list(texts), truncation=True)
        out = []
        for labels in results:
            by_label = {item["label"]: float(item["score"]) for item in labels}
            if self.label not in by_label:
                raise SteerLabError(
                    f"Classifier '{self.model}' has no label '{self.label}' (it has {', '.join(by_label)}); pick one of those."
                )
            out.append(by_label[self.label])
        return out
