"""The store's small repository API: every query the service layer needs, typed.

Functions take an open :class:`Session`; the caller decides the transaction (one per
stored batch, so a kill never leaves half a batch).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.schema import (
    Experiment,
    Generation,
    GenerationMetric,
    Prompt,
    Rating,
    Run,
    Variant,
    VariantMetric,
    Vector,
    utcnow,
)


@dataclass(frozen=True)
class NewVariant:
    name: str
    kind: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class NewGeneration:
    variant_id: int
    prompt_id: int
    sample_index: int
    text: str
    token_count: int
    seconds: float
    peak_memory_bytes: int


@dataclass(frozen=True)
class ExperimentSummary:
    name: str
    model_id: str
    prompts: int
    variants: int
    generations: int
    ratings: int
    last_run_status: str | None
    last_run_at: datetime | None


@dataclass(frozen=True)
class VariantCompute:
    variant_id: int
    generations: int
    tokens: int
    seconds: float
    peak_memory_bytes: int


# --- experiments -------------------------------------------------------------------


def find_experiment(session: Session, name: str) -> Experiment | None:
    return session.scalar(select(Experiment).where(Experiment.name == name))


def create_experiment(
    session: Session,
    name: str,
    description: str,
    model_id: str,
    spec: dict[str, Any],
    definition_hash: str,
    prompts: Sequence[str],
    vectors: dict[str, dict[str, Any]],
    variants: Sequence[NewVariant],
) -> Experiment:
    experiment = Experiment(
        name=name,
        description=description,
        model_id=model_id,
        spec_json=json.dumps(spec, ensure_ascii=False),
        definition_hash=definition_hash,
    )
    experiment.prompts = [Prompt(position=i, text=t) for i, t in enumerate(prompts)]
    experiment.vectors = [Vector(name=n, spec_json=json.dumps(v, ensure_ascii=False)) for n, v in vectors.items()]
    experiment.variants = [
        Variant(position=i, name=v.name, kind=v.kind, spec_json=json.dumps(v.spec, ensure_ascii=False))
        for i, v in enumerate(variants)
    ]
    session.add(experiment)
    session.flush()
    return experiment


def update_experiment_spec(
    session: Session, experiment: Experiment, spec: dict[str, Any], definition_hash: str
) -> None:
    experiment.spec_json = json.dumps(spec, ensure_ascii=False)
    experiment.definition_hash = definition_hash
    experiment.description = str(spec.get("description", ""))


def delete_experiment(session: Session, experiment: Experiment) -> None:
    session.delete(experiment)


def experiment_summaries(session: Session) -> list[ExperimentSummary]:
    def count(model: Any) -> Any:
        return select(func.count()).where(model.experiment_id == Experiment.id).correlate(Experiment).scalar_subquery()

    last_run = select(Run).where(Run.experiment_id == Experiment.id).order_by(Run.id.desc()).limit(1)
    rows = session.execute(
        select(
            Experiment.name,
            Experiment.model_id,
            count(Prompt),
            count(Variant),
            count(Generation),
            count(Rating),
            last_run.with_only_columns(Run.status).correlate(Experiment).scalar_subquery(),
            last_run.with_only_columns(Run.updated_at).correlate(Experiment).scalar_subquery(),
        ).order_by(Experiment.name)
    ).all()
    return [ExperimentSummary(*row) for row in rows]


# --- vectors -----------------------------------------------------------------------


def store_vector_data(
    session: Session,
    vector: Vector,
    data: bytes,
    model_id: str,
    hidden_size: int,
    method: str,
    pairs_hash: str,
    extraction_seconds: float,
) -> None:
    vector.data = data
    vector.model_id = model_id
    vector.hidden_size = hidden_size
    vector.method = method
    vector.pairs_hash = pairs_hash
    vector.extraction_seconds = extraction_seconds


# --- runs and generations ------------------------------------------------------------


def active_run(session: Session, experiment_id: int) -> Run | None:
    return session.scalar(select(Run).where(Run.experiment_id == experiment_id, Run.status == "running"))


def latest_run(session: Session, experiment_id: int) -> Run | None:
    return session.scalar(select(Run).where(Run.experiment_id == experiment_id).order_by(Run.id.desc()).limit(1))


def start_run(
    session: Session,
    experiment: Experiment,
    total: int,
    done: int,
    batch_size: int,
    device: str,
    dtype: str,
    owner: str,
) -> Run:
    run = Run(
        owner=owner,
        experiment_id=experiment.id,
        status="running",
        total_units=total,
        done_units=done,
        start_done=done,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )
    session.add(run)
    session.flush()
    return run


def finish_run(session: Session, run_id: int, status: str, error: str = "") -> None:
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(status=status, error=error, finished_at=utcnow(), updated_at=utcnow())
    )


def request_cancel(session: Session, run_id: int) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))


def cancel_requested(session: Session, run_id: int) -> bool:
    return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def done_keys(session: Session, experiment_id: int) -> set[tuple[int, int, int]]:
    """(variant_id, prompt_id, sample_index) of every stored generation."""
    rows = session.execute(
        select(Generation.variant_id, Generation.prompt_id, Generation.sample_index).where(
            Generation.experiment_id == experiment_id
        )
    )
    return {(v, p, s) for v, p, s in rows}


def record_batch(session: Session, experiment_id: int, run_id: int, rows: Sequence[NewGeneration]) -> list[int]:
    """Store a batch's generations and advance the run's progress (one transaction)."""
    generations = [
        Generation(
            experiment_id=experiment_id,
            run_id=run_id,
            variant_id=r.variant_id,
            prompt_id=r.prompt_id,
            sample_index=r.sample_index,
            text=r.text,
            token_count=r.token_count,
            seconds=r.seconds,
            peak_memory_bytes=r.peak_memory_bytes,
        )
        for r in rows
    ]
    session.add_all(generations)
    session.execute(
        update(Run).where(Run.id == run_id).values(done_units=Run.done_units + len(rows), updated_at=utcnow())
    )
    session.flush()
    return [g.id for g in generations]


def delete_variant_generations(session: Session, variant_id: int) -> None:
    session.execute(delete(Generation).where(Generation.variant_id == variant_id))
    session.execute(delete(VariantMetric).where(VariantMetric.variant_id == variant_id))


def variant_compute(session: Session, experiment_id: int) -> dict[int, VariantCompute]:
    rows = session.execute(
        select(
            Generation.variant_id,
            func.count(),
            func.sum(Generation.token_count),
            func.sum(Generation.seconds),
            func.max(Generation.peak_memory_bytes),
        )
        .where(Generation.experiment_id == experiment_id)
        .group_by(Generation.variant_id)
    )
    return {v: VariantCompute(v, n, int(t or 0), float(s or 0.0), int(m or 0)) for v, n, t, s, m in rows}


def generation_keys(session: Session, experiment_id: int) -> list[tuple[int, int, int, int]]:
    """(generation id, prompt id, sample index, variant position) of every output, without loading rows."""
    rows = session.execute(
        select(Generation.id, Generation.prompt_id, Generation.sample_index, Variant.position)
        .join(Variant, Variant.id == Generation.variant_id)
        .where(Generation.experiment_id == experiment_id)
    )
    return [(g, p, s, v) for g, p, s, v in rows]


def generations_of(session: Session, experiment_id: int) -> list[Generation]:
    return list(
        session.scalars(
            select(Generation)
            .where(Generation.experiment_id == experiment_id)
            .join(Generation.variant)
            .join(Generation.prompt)
            .order_by(Prompt.position, Generation.sample_index, Variant.position)
        )
    )


# --- metrics -----------------------------------------------------------------------


def set_variant_metrics(session: Session, variant_id: int, run_id: int | None, values: dict[str, float]) -> None:
    existing = {m.name: m for m in session.scalars(select(VariantMetric).where(VariantMetric.variant_id == variant_id))}
    for name, value in values.items():
        if name in existing:
            existing[name].value = value
            existing[name].run_id = run_id
            existing[name].updated_at = utcnow()
        else:
            session.add(VariantMetric(variant_id=variant_id, run_id=run_id, name=name, value=value))


def variant_metrics(session: Session, experiment_id: int) -> dict[int, dict[str, float]]:
    rows = session.execute(
        select(VariantMetric.variant_id, VariantMetric.name, VariantMetric.value)
        .join(Variant, Variant.id == VariantMetric.variant_id)
        .where(Variant.experiment_id == experiment_id)
    )
    out: dict[int, dict[str, float]] = {}
    for variant_id, name, value in rows:
        out.setdefault(variant_id, {})[name] = value
    return out


def set_generation_metrics(session: Session, values: Iterable[tuple[int, str, float]]) -> None:
    for generation_id, name, value in values:
        session.add(GenerationMetric(generation_id=generation_id, name=name, value=value))


def generation_metrics(session: Session, experiment_id: int) -> dict[int, dict[str, float]]:
    rows = session.execute(
        select(GenerationMetric.generation_id, GenerationMetric.name, GenerationMetric.value)
        .join(Generation, Generation.id == GenerationMetric.generation_id)
        .where(Generation.experiment_id == experiment_id)
    )
    out: dict[int, dict[str, float]] = {}
    for generation_id, name, value in rows:
        out.setdefault(generation_id, {})[name] = value
    return out


def unscored_generations(session: Session, experiment_id: int, metric: str) -> list[Generation]:
    scored = select(GenerationMetric.generation_id).where(GenerationMetric.name == metric)
    return list(
        session.scalars(
            select(Generation).where(Generation.experiment_id == experiment_id, Generation.id.not_in(scored))
        )
    )


# --- ratings -----------------------------------------------------------------------


def add_rating(
    session: Session, experiment_id: int, rater: str, left_id: int, right_id: int, choice: str, repeat: int = 0
) -> Rating:
    """Insert a vote; a second vote of the rater on the pair raises ``IntegrityError`` (unique key)."""
    rating = Rating(
        experiment_id=experiment_id,
        rater=rater,
        left_generation_id=left_id,
        right_generation_id=right_id,
        pair_low_id=min(left_id, right_id),
        pair_high_id=max(left_id, right_id),
        repeat=repeat,
        choice=choice,
    )
    session.add(rating)
    session.flush()
    return rating


def vote_pairs(session: Session, experiment_id: int) -> list[tuple[str, int, int]]:
    """(rater, lower generation id, higher generation id) of every vote, without loading rows."""
    rows = session.execute(
        select(Rating.rater, Rating.pair_low_id, Rating.pair_high_id).where(Rating.experiment_id == experiment_id)
    )
    return [(r, lo, hi) for r, lo, hi in rows]


def ratings_of(session: Session, experiment_id: int) -> list[Rating]:
    return list(session.scalars(select(Rating).where(Rating.experiment_id == experiment_id).order_by(Rating.id)))


# --- run phase and output health ---------------------------------------------------


@dataclass(frozen=True)
class OutputHealth:
    variant_id: int
    generations: int
    non_finite: int  # stopped because their logits broke down (an absurd coefficient)
    empty: int  # text is empty or only whitespace


def set_run_phase(session: Session, run_id: int, phase: str) -> None:
    """What the run is doing now ("generating", "scoring", ...); not a progress tick (updated_at stays)."""
    session.execute(update(Run).where(Run.id == run_id).values(phase=phase[:32]))


def set_run_hardware(session: Session, run_id: int, device: str, dtype: str) -> None:
    """The device and dtype, once the run has loaded its model (the row is stored before that)."""
    session.execute(update(Run).where(Run.id == run_id).values(device=device[:32], dtype=dtype[:32]))


def mark_non_finite(session: Session, generation_ids: Iterable[int]) -> None:
    ids = list(generation_ids)
    if ids:
        session.execute(update(Generation).where(Generation.id.in_(ids)).values(non_finite=True))


def run_generation_time(session: Session, run_id: int) -> tuple[int, float]:
    """(generations, summed wall seconds of their batches) stored by one run."""
    count, seconds = session.execute(
        select(func.count(), func.sum(Generation.seconds)).where(Generation.run_id == run_id)
    ).one()
    return int(count or 0), float(seconds or 0.0)


def output_health(session: Session, experiment_id: int) -> dict[int, OutputHealth]:
    """Per variant id: how many outputs broke down (non-finite) and how many are empty."""
    counts: dict[int, list[int]] = {}
    rows = session.execute(
        select(Generation.variant_id, Generation.non_finite, Generation.text).where(
            Generation.experiment_id == experiment_id
        )
    )
    for variant_id, non_finite, text in rows:
        c = counts.setdefault(variant_id, [0, 0, 0])
        c[0] += 1
        c[1] += bool(non_finite)
        c[2] += not text.strip()
    return {v: OutputHealth(v, n, bad, empty) for v, (n, bad, empty) in counts.items()}
