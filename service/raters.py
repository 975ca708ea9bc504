"""Rater quality of an experiment, from its stored votes: per rater (people and judges), and judge–human agreement.

The figures are computed by :mod:`engine.rater_quality`; this module reads the votes and the
raters an analyst left out of the statistics (the definition's ``statistics.exclude_raters``),
and keeps the result until a vote or the definition changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from db import repository as repo
from db.store import Store
from engine.rater_quality import JudgeAgreement, RaterQuality, RaterVote, rater_quality
from engine.rater_quality import judge_human_agreement as judge_agreement_of
from service import cache
from service.catalog import get_experiment

T = TypeVar("T")


def excluded_in(spec_json: str) -> tuple[str, ...]:
    """The raters left out of every statistic, read from a stored definition's JSON.

    Read from the raw JSON (not the parsed definition) so the report does not need to
    validate the whole definition; a definition without the section leaves nobody out.
    """
    statistics = json.loads(spec_json).get("statistics") or {}
    return tuple(str(r) for r in statistics.get("exclude_raters") or ())


def _votes(store: Store, name: str) -> tuple[list[RaterVote], tuple[str, ...]]:
    """Every vote as rater statistics need it, and who is left out: read once per data version
    (the rater report and the judges' agreement both need all of them)."""
    return _cached(store, name, "rater votes", lambda: _read_votes(store, name))


def _read_votes(store: Store, name: str) -> tuple[list[RaterVote], tuple[str, ...]]:
    with store.session() as session:
        experiment = get_experiment(session, name)
        rows = repo.rater_vote_rows(session, experiment.id)
        excluded = excluded_in(experiment.spec_json)
    return [RaterVote(*row) for row in rows], excluded


def _cached(store: Store, name: str, what: str, compute: Callable[[], T]) -> T:
    """``compute()``, recomputed only when the experiment's votes, outputs or definition changed."""
    with store.session() as session:
        version = repo.data_version(session, get_experiment(session, name).id)
    return cache.cached((store.url, what, name), version, compute)


def rater_report(store: Store, experiment_name: str) -> list[RaterQuality]:
    """Every rater of the experiment (people first, then judges): votes, agreement with the others,
    left-side share, self-consistency, outlier flag with its reason, and whether they are left out."""

    def compute() -> list[RaterQuality]:
        votes, excluded = _votes(store, experiment_name)
        return rater_quality(votes, excluded)

    return _cached(store, experiment_name, "raters", compute)


def judge_human_agreement(store: Store, experiment_name: str) -> list[JudgeAgreement]:
    """Per judge: Cohen's kappa and agreement with the human majority on the pairs both rated
    (raters left out of the statistics do not count in the majority)."""

    def compute() -> list[JudgeAgreement]:
        votes, excluded = _votes(store, experiment_name)
        return judge_agreement_of(votes, excluded)

    return _cached(store, experiment_name, "judge agreement", compute)
