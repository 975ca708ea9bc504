"""What each derived figure is computed from, as a stable hash (its ``source_hash``).

A hash is the SHA-256 of the canonical JSON (sorted keys, no spaces) of exactly the inputs
that decide the figure, so a change anywhere else (a description, another scorer, the rating
question) leaves it fresh, and any change to those inputs makes it stale:

- a scorer's scores: the scorer's definition (and the references, for reference scorers);
- fluency (perplexity under the unsteered model): the model and how prompts are rendered;
- a variant's figures (reversibility, side effects, compute, training figures): the variant's
  definition, which includes the vectors it uses and the texts a trained baseline learns
  from, plus the probe and neutral prompts the figures are measured on.

The variant's definition hash also decides whether its stored outputs still match it
(:mod:`service.catalog` drops them when it changes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.scorers.base import Scorer
from engine.spec import ExperimentSpec, VariantSpec, training_texts

FLUENCY = "fluency_ppl"


def canonical_hash(value: Any) -> str:
    """SHA-256 (hex) of ``value`` as canonical JSON; equal values give equal hashes on every host."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def variant_definition(spec: ExperimentSpec, variant: VariantSpec) -> dict[str, Any]:
    """Everything that decides a variant's outputs (its description does not)."""
    own = variant.to_dict()
    own.pop("description", None)
    return {
        "variant": own,
        "vectors": {name: spec.vector(name).to_dict() for name in variant.vector_names()},
        "training_texts": training_texts(spec, variant.train) if variant.train is not None else None,
    }


def variant_hash(spec: ExperimentSpec, variant: VariantSpec) -> str:
    return canonical_hash(variant_definition(spec, variant))


def variant_figures_hash(spec: ExperimentSpec, variant: VariantSpec) -> str:
    return canonical_hash(
        {
            "figures": "variant",
            "variant": variant_definition(spec, variant),
            "model": spec.model,
            "chat_template": spec.chat_template,
            "probe_prompt": spec.probe_prompt,
            "neutral_prompts": list(spec.neutral_prompts),
        }
    )


def scorer_hash(spec: ExperimentSpec, scorer: Scorer) -> str:
    references = [list(r) for r in spec.references] if scorer.needs_references else None
    return canonical_hash({"figures": "scorer", "scorer": scorer.to_dict(), "references": references})


def fluency_hash(spec: ExperimentSpec) -> str:
    return canonical_hash({"figures": FLUENCY, "model": spec.model, "chat_template": spec.chat_template})
