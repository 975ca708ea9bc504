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
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from db import repository as repo
from engine.scorers.base import Scorer
from engine.spec import ExperimentSpec, VariantSpec, training_texts

logger = logging.getLogger(__name__)

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


# Which exact weights were loaded: stored with the experiment when a run loads its model.


def record_model_source(session: Session, name: str, source: Mapping[str, Any]) -> None:
    """Store ``source`` (a LoadedModel's: a GGUF file's SHA-256, a hub revision) on experiment ``name``.

    A changed file under the same path is logged: outputs stored before came from other weights.
    """
    if not source:
        return
    experiment = repo.find_experiment(session, name)
    if experiment is None:
        return
    before = stored_model_source(experiment.model_source)
    now = dict(source)
    if before == now:
        return
    for key in ("sha256", "revision", "config_sha256"):
        if before.get(key) and before.get(key) != now.get(key):
            logger.warning(
                "experiment %s: model %s changed (%s %s, was %s); earlier outputs came from the old weights",
                name,
                experiment.model_id,
                key,
                now.get(key),
                before.get(key),
            )
    experiment.model_source = json.dumps(now, sort_keys=True)


def stored_model_source(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def describe_model_source(source: Mapping[str, Any]) -> str:
    """One line for reports and status: ``GGUF SmolLM2.gguf, 98,362,432 bytes, sha256 b179c952…``."""
    if source.get("sha256"):
        return f"GGUF {source.get('file', '')}, {int(source.get('bytes', 0)):,} bytes, sha256 {source['sha256']}"
    if source.get("revision"):
        return f"hub revision {source['revision']}"
    if source.get("config_sha256"):
        return f"local folder, config.json sha256 {source['config_sha256']}"
    return ""
