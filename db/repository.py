"""The store's small repository API: every query the service layer needs, typed.

Functions take an open :class:`Session`; the caller decides the transaction (one per
stored batch, so a kill never leaves half a batch).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.orm import Session, aliased

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
    # Definitions live in ``spec`` only; the rows are identities (and a vector's extracted data).
    experiment.vectors = [Vector(name=n) for n in vectors]
    experiment.variants = [Variant(position=i, name=v.name, kind=v.kind) for i, v in enumerate(variants)]
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


# --- generations (the run queue's functions are in db/runs.py) -----------------------


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
    session: Session,
    experiment_id: int,
    rater: str,
    left_id: int,
    right_id: int,
    choice: str,
    repeat: int = 0,
    rater_kind: str = "human",
) -> Rating:
    """Insert a vote; a second vote of the rater on the pair raises ``IntegrityError`` (unique key)."""
    rating = Rating(
        rater_kind=rater_kind,
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


@dataclass(frozen=True)
class NewRating:
    rater: str
    left_generation_id: int
    right_generation_id: int
    choice: str
    repeat: int = 0
    rater_kind: str = "human"
    created_at: datetime | None = None  # an imported vote keeps its time; None: now


def add_ratings(session: Session, experiment_id: int, ratings: Sequence[NewRating]) -> None:
    """Insert many votes in one statement (imports, benchmarks); the same unique key as :func:`add_rating`."""
    if not ratings:
        return
    now = utcnow()
    session.execute(
        insert(Rating),
        [
            {
                "experiment_id": experiment_id,
                "rater": r.rater,
                "left_generation_id": r.left_generation_id,
                "right_generation_id": r.right_generation_id,
                "pair_low_id": min(r.left_generation_id, r.right_generation_id),
                "pair_high_id": max(r.left_generation_id, r.right_generation_id),
                "repeat": r.repeat,
                "choice": r.choice,
                "rater_kind": r.rater_kind,
                "created_at": r.created_at or now,
            }
            for r in ratings
        ],
    )


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


def mark_non_finite(session: Session, generation_ids: Iterable[int]) -> None:
    ids = list(generation_ids)
    if ids:
        session.execute(update(Generation).where(Generation.id.in_(ids)).values(non_finite=True))


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


# --- aggregates for pages at team scale ----------------------------------------------
# Pages count and aggregate in SQL and read only the columns they show: an experiment of
# 10,000 generations and 50,000 votes is never loaded as ORM objects row by row.


def data_version(session: Session, experiment_id: int) -> tuple[object, ...]:
    """What every derived page figure depends on: changes whenever a vote, an output, a score
    or the definition changes (a cache keyed by it is never stale)."""
    definition = session.scalar(select(Experiment.spec_json).where(Experiment.id == experiment_id)) or ""
    # Counts and highest ids come from indexes; outputs are regenerated or marked only by a
    # run, whose row changes (updated_at), so reused ids after a deletion cannot hide a change.
    ratings = session.execute(
        select(func.count(), func.max(Rating.id)).where(Rating.experiment_id == experiment_id)
    ).one()
    generations = session.execute(
        select(func.count(), func.max(Generation.id)).where(Generation.experiment_id == experiment_id)
    ).one()
    runs = session.execute(
        select(func.count(), func.max(Run.id), func.max(Run.updated_at)).where(Run.experiment_id == experiment_id)
    ).one()
    # The sum too: re-scoring deletes and inserts, and SQLite may reuse ids (plain SUM, as
    # PostgreSQL has no TOTAL).
    scores = session.execute(
        select(func.count(), func.max(GenerationMetric.id), func.sum(GenerationMetric.value))
        .join(Generation, Generation.id == GenerationMetric.generation_id)
        .where(Generation.experiment_id == experiment_id)
    ).one()
    figures = session.execute(
        select(
            func.count(),
            func.max(VariantMetric.id),
            func.max(VariantMetric.updated_at),
            func.sum(VariantMetric.value),
        )
        .join(Variant, Variant.id == VariantMetric.variant_id)
        .where(Variant.experiment_id == experiment_id)
    ).one()
    variants = session.execute(
        select(func.count(), func.max(Variant.id)).where(Variant.experiment_id == experiment_id)
    ).one()
    return (experiment_id, definition, *ratings, *generations, *runs, *scores, *figures, *variants)


def _votes_of(experiment_id: int, rater_kind: str | None, exclude: Collection[str]) -> Any:
    """The WHERE clause of an experiment's first-showing votes of one kind of rater ("human", "judge";
    None: both), leaving out the raters in ``exclude`` (an analyst's switch: they count in no statistic)."""
    # First showings only: a repeat (a pair shown again to the same rater) measures that rater's
    # self-consistency; counting it too would give the pair two votes from one person.
    clause = (Rating.experiment_id == experiment_id) & (Rating.repeat == 0)
    if rater_kind is not None:
        clause = clause & (Rating.rater_kind == rater_kind)
    if exclude:
        clause = clause & Rating.rater.not_in(list(exclude))
    return clause


def vote_tallies(
    session: Session, experiment_id: int, rater_kind: str | None = "human", exclude: Collection[str] = ()
) -> list[tuple[str, str, str, int]]:
    """(left variant name, right variant name, choice, votes): every vote of that kind of rater, counted in SQL."""
    left, right = aliased(Generation), aliased(Generation)
    rows = session.execute(
        select(left.variant_id, right.variant_id, Rating.choice, func.count())
        .join(left, left.id == Rating.left_generation_id)
        .join(right, right.id == Rating.right_generation_id)
        .where(_votes_of(experiment_id, rater_kind, exclude))
        .group_by(left.variant_id, right.variant_id, Rating.choice)
    ).all()
    names = dict(session.execute(select(Variant.id, Variant.name).where(Variant.experiment_id == experiment_id)).all())
    return [(names[a], names[b], c, n) for a, b, c, n in rows]


def vote_tallies_by_rater(
    session: Session, experiment_id: int, rater_kind: str | None = "judge", exclude: Collection[str] = ()
) -> list[tuple[str, str, str, str, int]]:
    """(rater, left variant, right variant, choice, votes): :func:`vote_tallies` per rater (each judge apart)."""
    left, right = aliased(Generation), aliased(Generation)
    rows = session.execute(
        select(Rating.rater, left.variant_id, right.variant_id, Rating.choice, func.count())
        .join(left, left.id == Rating.left_generation_id)
        .join(right, right.id == Rating.right_generation_id)
        .where(_votes_of(experiment_id, rater_kind, exclude))
        .group_by(Rating.rater, left.variant_id, right.variant_id, Rating.choice)
    ).all()
    names = dict(session.execute(select(Variant.id, Variant.name).where(Variant.experiment_id == experiment_id)).all())
    return [(r, names[a], names[b], c, n) for r, a, b, c, n in rows]


def length_tallies(
    session: Session, experiment_id: int, rater_kind: str | None = "human", exclude: Collection[str] = ()
) -> list[tuple[str, str, str, int, int, int]]:
    """(left variant, right variant, choice, left tokens, right tokens, votes): what length-controlled
    ratings need, counted in SQL (outputs of one length setting share a few distinct lengths)."""
    left, right = aliased(Generation), aliased(Generation)
    rows = session.execute(
        select(left.variant_id, right.variant_id, Rating.choice, left.token_count, right.token_count, func.count())
        .join(left, left.id == Rating.left_generation_id)
        .join(right, right.id == Rating.right_generation_id)
        .where(_votes_of(experiment_id, rater_kind, exclude))
        .group_by(left.variant_id, right.variant_id, Rating.choice, left.token_count, right.token_count)
    ).all()
    names = dict(session.execute(select(Variant.id, Variant.name).where(Variant.experiment_id == experiment_id)).all())
    return [(names[a], names[b], c, lt, rt, n) for a, b, c, lt, rt, n in rows]


def raters_by_kind(session: Session, experiment_id: int) -> dict[str, str]:
    """Rater name -> kind ("human" or "judge") of everyone who voted in the experiment."""
    rows = session.execute(
        select(Rating.rater, Rating.rater_kind).where(Rating.experiment_id == experiment_id).distinct()
    )
    return {rater: kind for rater, kind in rows}


@dataclass(frozen=True)
class VoteOverview:
    votes: int
    raters: int
    rated_pairs: int  # pairs of outputs with at least one vote


def vote_overview(
    session: Session, experiment_id: int, rater_kind: str | None = "human", exclude: Collection[str] = ()
) -> VoteOverview:
    where = _votes_of(experiment_id, rater_kind, exclude)
    votes, raters = session.execute(select(func.count(), func.count(Rating.rater.distinct())).where(where)).one()
    pairs = (
        select(Rating.pair_low_id, Rating.pair_high_id)
        .where(where)
        .group_by(Rating.pair_low_id, Rating.pair_high_id)
        .subquery()
    )
    rated = session.scalar(select(func.count()).select_from(pairs)) or 0
    return VoteOverview(int(votes or 0), int(raters or 0), int(rated))


def shared_pair_votes(
    session: Session, experiment_id: int, rater_kind: str | None = "human", exclude: Collection[str] = ()
) -> list[tuple[str, int, int, str]]:
    """(rater, left id, right id, choice) of the votes on pairs that two or more raters rated, in vote order
    (first showings only: a rater's repeat of a pair measures that rater, not agreement)."""
    where = _votes_of(experiment_id, rater_kind, exclude)
    shared = (
        select(Rating.pair_low_id, Rating.pair_high_id)
        .where(where)
        .group_by(Rating.pair_low_id, Rating.pair_high_id)
        .having(func.count(Rating.rater.distinct()) >= 2)
        .subquery()
    )
    rows = session.execute(
        select(Rating.rater, Rating.left_generation_id, Rating.right_generation_id, Rating.choice)
        .join(shared, (shared.c.pair_low_id == Rating.pair_low_id) & (shared.c.pair_high_id == Rating.pair_high_id))
        .where(where)
        .order_by(Rating.id)
    )
    return [(r, a, b, c) for r, a, b, c in rows]


def score_rows(session: Session, experiment_id: int) -> list[tuple[int, int, int, str, float]]:
    """(variant id, prompt position, sample, metric, value) of every score: paired comparisons match
    variants on (prompt, sample), where they share the random stream."""
    rows = session.execute(
        select(
            Generation.variant_id,
            Prompt.position,
            Generation.sample_index,
            GenerationMetric.name,
            GenerationMetric.value,
        )
        .join(Generation, Generation.id == GenerationMetric.generation_id)
        .join(Prompt, Prompt.id == Generation.prompt_id)
        .where(Generation.experiment_id == experiment_id)
    )
    return [(v, p, s, m, x) for v, p, s, m, x in rows]


def rating_version(session: Session, experiment_id: int, rater_kind: str | None = None) -> tuple[int, int]:
    """(votes, highest rating id) of the experiment, of one kind of rater (None: all): a cheap check
    for new or deleted votes."""
    where = Rating.experiment_id == experiment_id
    if rater_kind is not None:
        where = where & (Rating.rater_kind == rater_kind)
    count, highest = session.execute(select(func.count(), func.max(Rating.id)).where(where)).one()
    return int(count or 0), int(highest or 0)


def generation_version(session: Session, experiment_id: int) -> tuple[object, ...]:
    """(generations, highest generation id, runs, highest run id, latest run update) of the experiment:
    changes when a run stores outputs or when outputs are deleted (all cheap index lookups)."""
    generations = session.execute(
        select(func.count(), func.max(Generation.id)).where(Generation.experiment_id == experiment_id)
    ).one()
    runs = session.execute(
        select(func.count(), func.max(Run.id), func.max(Run.updated_at)).where(Run.experiment_id == experiment_id)
    ).one()
    return (*generations, *runs)


def votes_after(
    session: Session, experiment_id: int, after_id: int, rater_kind: str | None = None
) -> list[tuple[int, str, int, int, int]]:
    """(rating id, rater, lower generation id, higher generation id, repeat) of the votes newer than
    ``after_id``, of one kind of rater ("human", "judge"; None: all)."""
    where = (Rating.experiment_id == experiment_id) & (Rating.id > after_id)
    if rater_kind is not None:
        where = where & (Rating.rater_kind == rater_kind)
    rows = session.execute(
        select(Rating.id, Rating.rater, Rating.pair_low_id, Rating.pair_high_id, Rating.repeat)
        .where(where)
        .order_by(Rating.id)
    )
    return [(i, r, lo, hi, rep) for i, r, lo, hi, rep in rows]


def pair_is_rated(session: Session, low_id: int, high_id: int) -> bool:
    """Whether any rater voted on this pair (found through the left/right generation indexes)."""
    found = session.scalar(
        select(Rating.id)
        .where(
            Rating.left_generation_id.in_((low_id, high_id)),
            Rating.pair_low_id == low_id,
            Rating.pair_high_id == high_id,
        )
        .limit(1)
    )
    return found is not None


@dataclass(frozen=True)
class ShownGeneration:
    id: int
    experiment_id: int
    variant_id: int
    variant: str
    prompt_id: int
    prompt: str
    sample_index: int
    text: str


def shown_generations(session: Session, ids: Sequence[int]) -> dict[int, ShownGeneration]:
    """The generations with their variant name and prompt text, in one query."""
    rows = session.execute(
        select(
            Generation.id,
            Generation.experiment_id,
            Generation.variant_id,
            Variant.name,
            Generation.prompt_id,
            Prompt.text,
            Generation.sample_index,
            Generation.text,
        )
        .join(Variant, Variant.id == Generation.variant_id)
        .join(Prompt, Prompt.id == Generation.prompt_id)
        .where(Generation.id.in_(list(ids)))
    )
    return {row[0]: ShownGeneration(*row) for row in rows}


def generation_index(session: Session, experiment_id: int) -> list[tuple[int, int, int]]:
    """(generation id, variant id, prompt id) of every output, without texts."""
    rows = session.execute(
        select(Generation.id, Generation.variant_id, Generation.prompt_id).where(
            Generation.experiment_id == experiment_id
        )
    )
    return [(g, v, p) for g, v, p in rows]


@dataclass(frozen=True)
class GenerationRow:
    id: int
    variant: str
    prompt: str
    prompt_index: int
    sample_index: int
    text: str
    token_count: int
    seconds: float


def generation_rows(
    session: Session, experiment_id: int, rows: Sequence[tuple[int, int]] | None = None
) -> list[GenerationRow]:
    """Outputs with their variant and prompt, in prompt, sample and variant order (one query).

    ``rows`` limits them to these (prompt index, sample) rows.
    """
    query = (
        select(
            Generation.id,
            Variant.name,
            Prompt.text,
            Prompt.position,
            Generation.sample_index,
            Generation.text,
            Generation.token_count,
            Generation.seconds,
        )
        .join(Variant, Variant.id == Generation.variant_id)
        .join(Prompt, Prompt.id == Generation.prompt_id)
        .where(Generation.experiment_id == experiment_id)
        .order_by(Prompt.position, Generation.sample_index, Variant.position)
    )
    if rows is not None:
        if not rows:
            return []
        query = query.where(tuple_(Prompt.position, Generation.sample_index).in_(list(rows)))
    return [GenerationRow(*row) for row in session.execute(query)]


def output_rows(session: Session, experiment_id: int) -> list[tuple[int, str, int]]:
    """(prompt index, prompt text, sample) of every (prompt, sample) row that has outputs, in order."""
    rows = session.execute(
        select(Prompt.position, Prompt.text, Generation.sample_index)
        .join(Prompt, Prompt.id == Generation.prompt_id)
        .where(Generation.experiment_id == experiment_id)
        .group_by(Prompt.position, Prompt.text, Generation.sample_index)
        .order_by(Prompt.position, Generation.sample_index)
    )
    return [(i, t, s) for i, t, s in rows]


@dataclass(frozen=True)
class RatingRow:
    rater: str
    left_generation_id: int
    right_generation_id: int
    left_variant: str
    right_variant: str
    choice: str
    created_at: datetime
    rater_kind: str = "human"
    repeat: int = 0
    left_tokens: int = 0  # the two outputs' lengths, for length-controlled ratings
    right_tokens: int = 0
    rating_id: int = 0


def rating_rows(session: Session, experiment_id: int) -> list[RatingRow]:
    """Every vote with the variant names and lengths of its two sides, in vote order (one query, no lazy loads)."""
    left, right = aliased(Generation), aliased(Generation)
    left_variant, right_variant = aliased(Variant), aliased(Variant)
    rows = session.execute(
        select(
            Rating.rater,
            Rating.left_generation_id,
            Rating.right_generation_id,
            left_variant.name,
            right_variant.name,
            Rating.choice,
            Rating.created_at,
            Rating.rater_kind,
            Rating.repeat,
            left.token_count,
            right.token_count,
            Rating.id,
        )
        .join(left, left.id == Rating.left_generation_id)
        .join(right, right.id == Rating.right_generation_id)
        .join(left_variant, left_variant.id == left.variant_id)
        .join(right_variant, right_variant.id == right.variant_id)
        .where(Rating.experiment_id == experiment_id)
        .order_by(Rating.id)
    )
    return [RatingRow(*row) for row in rows]


# --- repeated pairs, raters left out (the statistics section) -------------------------------


def has_first_vote(session: Session, experiment_id: int, rater: str, left_id: int, right_id: int) -> bool:
    """Whether the rater's first vote on this pair (either side) is stored: a repeat needs one."""
    found = session.scalar(
        select(Rating.id)
        .where(
            Rating.experiment_id == experiment_id,
            Rating.rater == rater,
            Rating.pair_low_id == min(left_id, right_id),
            Rating.pair_high_id == max(left_id, right_id),
            Rating.repeat == 0,
        )
        .limit(1)
    )
    return found is not None


def voted_raters(session: Session, experiment_id: int) -> list[str]:
    """The names of everyone (people and judges) with a vote in the experiment, sorted."""
    rows = session.scalars(
        select(Rating.rater).where(Rating.experiment_id == experiment_id).distinct().order_by(Rating.rater)
    )
    return list(rows)


def swap_experiment_spec(session: Session, experiment_id: int, expected: str, spec: dict[str, Any]) -> bool:
    """Store ``spec`` as the definition only if the stored one is still ``expected`` (its JSON text);
    False when another change came first (read again and retry), so no change is lost."""
    result = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.spec_json == expected)
        .values(spec_json=json.dumps(spec, ensure_ascii=False))
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def rater_vote_rows(session: Session, experiment_id: int) -> list[tuple[str, str, int, int, str, int]]:
    """(rater, rater kind, left id, right id, choice, repeat) of every vote, in vote order: what rater
    statistics need, read from the ratings table alone (no joins)."""
    rows = session.execute(
        select(
            Rating.rater,
            Rating.rater_kind,
            Rating.left_generation_id,
            Rating.right_generation_id,
            Rating.choice,
            Rating.repeat,
        )
        .where(Rating.experiment_id == experiment_id)
        .order_by(Rating.id)
    )
    return [(r, kind, left, right, choice, repeat) for r, kind, left, right, choice, repeat in rows]
