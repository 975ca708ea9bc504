"""Derived figures with their provenance: store them with a source hash, find and drop stale ones.

A derived figure (a generation's score, a variant's side effects or training figures) records
in ``source_hash`` a hash of what it was computed from; :mod:`service.staleness` computes the
hashes. A figure whose hash differs from today's is stale; ``""`` (stored before hashes
existed) is unknown provenance and counts as stale too.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.schema import Generation, GenerationMetric, Variant, VariantMetric, utcnow


def set_generation_scores(session: Session, name: str, source_hash: str, values: Iterable[tuple[int, float]]) -> None:
    """Store metric ``name`` for each (generation id, value), all computed from ``source_hash``."""
    session.add_all(GenerationMetric(generation_id=g, name=name, value=v, source_hash=source_hash) for g, v in values)


def drop_stale_generation_metrics(session: Session, experiment_id: int, name: str, source_hash: str) -> int:
    """Delete the experiment's ``name`` metrics not computed from ``source_hash``; returns how many."""
    of_experiment = select(Generation.id).where(Generation.experiment_id == experiment_id)
    result = session.execute(
        delete(GenerationMetric)
        .where(
            GenerationMetric.name == name,
            GenerationMetric.source_hash != source_hash,
            GenerationMetric.generation_id.in_(of_experiment),
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def generation_metric_sources(session: Session, experiment_id: int) -> dict[str, dict[str, int]]:
    """Per metric name, how many of the experiment's stored values came from each source hash."""
    rows = session.execute(
        select(GenerationMetric.name, GenerationMetric.source_hash, func.count())
        .join(Generation, Generation.id == GenerationMetric.generation_id)
        .where(Generation.experiment_id == experiment_id)
        .group_by(GenerationMetric.name, GenerationMetric.source_hash)
    )
    out: dict[str, dict[str, int]] = {}
    for name, source_hash, count in rows:
        out.setdefault(name, {})[source_hash] = int(count)
    return out


def replace_variant_figures(
    session: Session, variant_id: int, run_id: int | None, source_hash: str, values: dict[str, float]
) -> None:
    """The variant's figures become exactly ``values`` (a figure no longer measured does not linger)."""
    session.execute(delete(VariantMetric).where(VariantMetric.variant_id == variant_id))
    now = utcnow()
    session.add_all(
        VariantMetric(variant_id=variant_id, run_id=run_id, name=n, value=v, source_hash=source_hash, updated_at=now)
        for n, v in values.items()
    )


def variant_figure_sources(session: Session, experiment_id: int) -> dict[int, set[str]]:
    """Per variant id, the source hashes its stored figures carry (one when they are consistent)."""
    rows = session.execute(
        select(VariantMetric.variant_id, VariantMetric.source_hash)
        .join(Variant, Variant.id == VariantMetric.variant_id)
        .where(Variant.experiment_id == experiment_id)
        .distinct()
    )
    out: dict[int, set[str]] = {}
    for variant_id, source_hash in rows:
        out.setdefault(variant_id, set()).add(source_hash)
    return out


def generation_count(session: Session, experiment_id: int) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Generation).where(Generation.experiment_id == experiment_id))
        or 0
    )
