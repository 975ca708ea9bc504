"""The store's side of LLM judges: their readings (``judgements``), their votes, and their runs.

A judge reads each pair of outputs in both orders; each reading is a row of ``judgements``
(unique per experiment, judge and order), and the vote both readings make is a row of
``ratings`` with ``rater_kind = "judge"`` and the rater ``judge:<name>``. A batch's readings,
its votes and the run's progress are stored in one transaction (:func:`store_judged_batch`),
so a judge run stopped at any moment keeps whole batches and resumes without storing
anything twice.

A judge run is a row of ``runs`` like any other (one active run per experiment); its
options (``runs.options_json``, written by :class:`service.run_options.RunOptions`) start
with :data:`JUDGE_RUN_MARK`, which is how the queries here tell judge runs from
generation runs.

Functions take an open :class:`Session`; the caller decides the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from db import repository as repo
from db.schema import Generation, Judgement, Prompt, Rating, Run, Variant, utcnow

JUDGE_KIND = "judge"
# How a judge run's options begin: json.dumps({"task": "judge", ...}) with the default separators.
JUDGE_RUN_MARK = '{"task": "judge"'


@dataclass(frozen=True)
class NewJudgement:
    left_generation_id: int  # shown first (label A)
    right_generation_id: int
    choice: str  # "left", "right" or "tie"
    p_left: float | None = None
    p_right: float | None = None
    answer: str = ""


@dataclass(frozen=True)
class JudgeVote:
    left_generation_id: int
    right_generation_id: int
    choice: str


@dataclass(frozen=True)
class OutputKey:
    generation_id: int
    prompt_position: int
    sample_index: int
    variant_position: int


@dataclass(frozen=True)
class JudgementRow:
    """A stored reading with what pages show of its pair."""

    id: int
    left_generation_id: int
    right_generation_id: int
    left_variant: str
    right_variant: str
    prompt: str
    prompt_position: int
    sample_index: int
    choice: str
    p_left: float | None
    p_right: float | None
    answer: str
    created_at: datetime


def output_keys(session: Session, experiment_id: int) -> list[OutputKey]:
    """Every stored output's (prompt position, sample, variant position), without texts."""
    rows = session.execute(
        select(Generation.id, Prompt.position, Generation.sample_index, Variant.position)
        .join(Prompt, Prompt.id == Generation.prompt_id)
        .join(Variant, Variant.id == Generation.variant_id)
        .where(Generation.experiment_id == experiment_id)
    )
    return [OutputKey(g, p, s, v) for g, p, s, v in rows]


def stored_readings(session: Session, experiment_id: int, judge: str) -> dict[tuple[int, int], str]:
    """(shown first, shown second) -> choice of every reading the judge stored."""
    rows = session.execute(
        select(Judgement.left_generation_id, Judgement.right_generation_id, Judgement.choice).where(
            Judgement.experiment_id == experiment_id, Judgement.judge == judge
        )
    )
    return {(left, right): choice for left, right, choice in rows}


def voted_pairs(session: Session, experiment_id: int, rater: str) -> set[tuple[int, int]]:
    """(lower, higher generation id) of every pair the rater voted on."""
    rows = session.execute(
        select(Rating.pair_low_id, Rating.pair_high_id).where(
            Rating.experiment_id == experiment_id, Rating.rater == rater
        )
    )
    return {(low, high) for low, high in rows}


def store_judged_batch(
    session: Session,
    experiment_id: int,
    run_id: int,
    judge: str,
    rater: str,
    readings: Sequence[NewJudgement],
    votes: Sequence[JudgeVote],
) -> None:
    """A batch's readings and votes, and the run's progress (one reading, one unit), in the caller's transaction."""
    now = utcnow()
    if readings:
        session.execute(
            insert(Judgement),
            [
                {
                    "experiment_id": experiment_id,
                    "judge": judge,
                    "left_generation_id": r.left_generation_id,
                    "right_generation_id": r.right_generation_id,
                    "choice": r.choice,
                    "p_left": r.p_left,
                    "p_right": r.p_right,
                    "answer": r.answer,
                    "created_at": now,
                }
                for r in readings
            ],
        )
    repo.add_ratings(
        session,
        experiment_id,
        [
            repo.NewRating(rater, v.left_generation_id, v.right_generation_id, v.choice, rater_kind=JUDGE_KIND)
            for v in votes
        ],
    )
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(done_units=Run.done_units + len(readings), updated_at=now)
        .execution_options(synchronize_session=False)
    )


def forget_judge(session: Session, experiment_id: int, judge: str, rater: str) -> tuple[int, int]:
    """Delete a judge's readings and votes (to start it over); returns (readings, votes) deleted."""
    readings = session.scalar(
        select(func.count()).where(Judgement.experiment_id == experiment_id, Judgement.judge == judge)
    )
    votes = session.scalar(select(func.count()).where(Rating.experiment_id == experiment_id, Rating.rater == rater))
    session.execute(delete(Judgement).where(Judgement.experiment_id == experiment_id, Judgement.judge == judge))
    session.execute(delete(Rating).where(Rating.experiment_id == experiment_id, Rating.rater == rater))
    return int(readings or 0), int(votes or 0)


def reading_counts(session: Session, experiment_id: int) -> dict[str, int]:
    """Judge name -> readings stored."""
    rows = session.execute(
        select(Judgement.judge, func.count()).where(Judgement.experiment_id == experiment_id).group_by(Judgement.judge)
    )
    return {judge: int(count) for judge, count in rows}


@dataclass(frozen=True)
class ReadingStats:
    readings: int
    first_shown: int  # readings that preferred the output shown first ("left")
    decisive: int  # readings that preferred either output
    label_mass: float | None  # mean of p_left + p_right over readings that have them (a local judge)


def reading_stats(session: Session, experiment_id: int) -> dict[str, ReadingStats]:
    """Judge name -> how its readings split between the positions, and how much probability a local
    judge gave the two answer labels at all."""
    rows = session.execute(
        select(
            Judgement.judge,
            func.count(),
            func.sum(case((Judgement.choice == "left", 1), else_=0)),
            func.sum(case((Judgement.choice.in_(("left", "right")), 1), else_=0)),
            func.avg(Judgement.p_left + Judgement.p_right),
        )
        .where(Judgement.experiment_id == experiment_id)
        .group_by(Judgement.judge)
    )
    return {
        judge: ReadingStats(int(n), int(first or 0), int(decisive or 0), None if mass is None else float(mass))
        for judge, n, first, decisive, mass in rows
    }


def recent_readings(session: Session, experiment_id: int, judge: str, limit: int) -> list[JudgementRow]:
    """The judge's latest readings, newest first, with their variants and prompt."""
    left, right = aliased(Generation), aliased(Generation)
    left_variant, right_variant = aliased(Variant), aliased(Variant)
    rows = session.execute(
        select(
            Judgement.id,
            Judgement.left_generation_id,
            Judgement.right_generation_id,
            left_variant.name,
            right_variant.name,
            Prompt.text,
            Prompt.position,
            left.sample_index,
            Judgement.choice,
            Judgement.p_left,
            Judgement.p_right,
            Judgement.answer,
            Judgement.created_at,
        )
        .join(left, left.id == Judgement.left_generation_id)
        .join(right, right.id == Judgement.right_generation_id)
        .join(left_variant, left_variant.id == left.variant_id)
        .join(right_variant, right_variant.id == right.variant_id)
        .join(Prompt, Prompt.id == left.prompt_id)
        .where(Judgement.experiment_id == experiment_id, Judgement.judge == judge)
        .order_by(Judgement.id.desc())
        .limit(limit)
    )
    return [
        JudgementRow(g, left_id, right_id, lv, rv, text, position, sample, choice, pl, pr, answer, at)
        for g, left_id, right_id, lv, rv, text, position, sample, choice, pl, pr, answer, at in rows
    ]


def votes_on(
    session: Session, experiment_id: int, rater: str, pairs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], JudgeVote]:
    """The rater's votes on these (lower, higher generation id) pairs."""
    wanted = set(pairs)
    if not wanted:
        return {}
    ids = sorted({i for pair in wanted for i in pair})
    rows = session.execute(
        select(Rating.left_generation_id, Rating.right_generation_id, Rating.choice).where(
            Rating.experiment_id == experiment_id, Rating.rater == rater, Rating.pair_low_id.in_(ids)
        )
    )
    out = {}
    for left_id, right_id, choice in rows:
        key = (min(left_id, right_id), max(left_id, right_id))
        if key in wanted:
            out[key] = JudgeVote(left_id, right_id, choice)
    return out


def reading_pace(session: Session, experiment_id: int, judge: str, since: datetime) -> tuple[int, float]:
    """(readings stored since ``since``, seconds between the first and the last of them)."""
    count, first, last = session.execute(
        select(func.count(), func.min(Judgement.created_at), func.max(Judgement.created_at)).where(
            Judgement.experiment_id == experiment_id, Judgement.judge == judge, Judgement.created_at >= since
        )
    ).one()
    seconds = (last - first).total_seconds() if first is not None and last is not None else 0.0
    return int(count or 0), seconds


# --- judge runs --------------------------------------------------------------------


def set_run_options(session: Session, run_id: int, options_json: str) -> None:
    """What a judge run records it runs (the judge's definition changed while the run was queued)."""
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(options_json=options_json)
        .execution_options(synchronize_session=False)
    )


def is_judge_run(options_json: str) -> bool:
    return (options_json or "").startswith(JUDGE_RUN_MARK)


def judge_of_run(options_json: str) -> str | None:
    """The judge a run's options name, or None for a generation run."""
    if not is_judge_run(options_json):
        return None
    judge = json.loads(options_json).get("judge")
    return str(judge) if judge is not None else None


def latest_generation_run(session: Session, experiment_id: int) -> Run | None:
    """The experiment's latest run that generates (not a judge run)."""
    return session.scalar(
        select(Run)
        .where(Run.experiment_id == experiment_id, Run.options_json.not_like(f"{JUDGE_RUN_MARK}%"))
        .order_by(Run.id.desc())
        .limit(1)
    )


def judge_runs(session: Session, experiment_id: int, judge: str | None = None, before: int | None = None) -> list[Run]:
    """The experiment's judge runs (of ``judge`` only, if given; older than run ``before``), newest first."""
    query = select(Run).where(Run.experiment_id == experiment_id, Run.options_json.like(f"{JUDGE_RUN_MARK}%"))
    if before is not None:
        query = query.where(Run.id < before)
    found = list(session.scalars(query.order_by(Run.id.desc())))
    return [r for r in found if judge is None or judge_of_run(r.options_json) == judge]
