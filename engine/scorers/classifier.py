"""Any Hugging Face text-classification model by hub id: the probability of one label.

For users with network (or the model in their cache); the offline tests do not use it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import SteerLabError
from engine.fields import Where, as_str, check_keys, required
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


@dataclass(frozen=True)
class ClassifierScorer(Scorer):
    kind = "classifier"
    summary = "Probability of a label under a Hugging Face text-classification model."

    name: str
    model: str
    label: str

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any], where: Where) -> ClassifierScorer:
        check_keys(raw, ("model", "label"), where)
        return cls(
            name,
            as_str(required(raw, "model", where), where.child("model")),
            as_str(required(raw, "label", where), where.child("label")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "model": self.model, "label": self.label}

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
