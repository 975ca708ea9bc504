"""Blind pairwise rating: serve pairs least-rated first, record votes with their sides.

An *item* is two generations of two different variants for the same prompt and sample.
A rater never gets an item twice (in either order); the side each generation is shown
on is drawn per item and stored with the vote.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from db import repository as repo
from db.schema import CHOICES, Generation
from db.store import Store
from engine.errors import SteerLabError
from service.catalog import get_experiment, stored_spec

CHOICE_LABELS = {"left": "A is better", "right": "B is better", "tie": "Tie", "both_bad": "Both bad"}


@dataclass(frozen=True)
class RatingItem:
    prompt: str
    left_id: int
    right_id: int
    left_text: str
    right_text: str
    left_variant: str  # only shown after the vote, and only if the experiment allows it
    right_variant: str


@dataclass(frozen=True)
class RatingProgress:
    rater_votes: int
    rater_remaining: int
    items: int
    items_rated: int
    votes: int


def _items(generations: list[Generation]) -> list[tuple[Generation, Generation]]:
    by_row: dict[tuple[int, int], list[Generation]] = {}
    for g in generations:
        by_row.setdefault((g.prompt_id, g.sample_index), []).append(g)
    return [pair for row in by_row.values() for pair in combinations(sorted(row, key=lambda g: g.variant.position), 2)]


def next_item(store: Store, experiment_name: str, rater: str, rng: random.Random | None = None) -> RatingItem | None:
    """The least-rated item this rater has not rated yet, sides drawn at random; None when done."""
    rater = _check_rater(rater)
    rng = rng or random.Random()
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        generations = repo.generations_of(session, experiment.id)
        ratings = repo.ratings_of(session, experiment.id)
        counts = Counter(frozenset((r.left_generation_id, r.right_generation_id)) for r in ratings)
        mine = {frozenset((r.left_generation_id, r.right_generation_id)) for r in ratings if r.rater == rater}
        candidates = [pair for pair in _items(generations) if frozenset((pair[0].id, pair[1].id)) not in mine]
        if not candidates:
            return None
        fewest = min(counts[frozenset((a.id, b.id))] for a, b in candidates)
        a, b = rng.choice([(a, b) for a, b in candidates if counts[frozenset((a.id, b.id))] == fewest])
        left, right = (a, b) if rng.random() < 0.5 else (b, a)
        return RatingItem(
            left.prompt.text, left.id, right.id, left.text, right.text, left.variant.name, right.variant.name
        )


def record_vote(store: Store, experiment_name: str, rater: str, left_id: int, right_id: int, choice: str) -> bool:
    """Store one vote; returns whether the experiment reveals variant names after a vote."""
    rater = _check_rater(rater)
    if choice not in CHOICES:
        raise SteerLabError(f"Choice '{choice}' is not one of {', '.join(CHOICES)}; pick one of those.")
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        left, right = session.get(Generation, left_id), session.get(Generation, right_id)
        if left is None or right is None or {left.experiment_id, right.experiment_id} != {experiment.id}:
            raise SteerLabError(
                f"Generations {left_id} and {right_id} are not both outputs of '{experiment_name}'; reload the page."
            )
        if (left.prompt_id, left.sample_index) != (
            right.prompt_id,
            right.sample_index,
        ) or left.variant_id == right.variant_id:
            raise SteerLabError(
                "Those two generations do not answer the same prompt and sample with two variants; reload the page."
            )
        pair = {left_id, right_id}
        if any(
            {r.left_generation_id, r.right_generation_id} == pair and r.rater == rater
            for r in repo.ratings_of(session, experiment.id)
        ):
            raise SteerLabError(f"Rater '{rater}' has already rated this pair; the next pair is on its way.")
        repo.add_rating(session, experiment.id, rater, left_id, right_id, choice)
        return stored_spec(experiment).reveal_after_vote


def progress(store: Store, experiment_name: str, rater: str) -> RatingProgress:
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        items = _items(repo.generations_of(session, experiment.id))
        ratings = repo.ratings_of(session, experiment.id)
        mine = {frozenset((r.left_generation_id, r.right_generation_id)) for r in ratings if r.rater == rater.strip()}
        rated = {frozenset((r.left_generation_id, r.right_generation_id)) for r in ratings}
        return RatingProgress(len(mine), len(items) - len(mine), len(items), len(rated), len(ratings))


def _check_rater(rater: str) -> str:
    name = rater.strip()
    if not name:
        raise SteerLabError("The rater name is empty; type your name before rating.")
    if len(name) > 100:
        raise SteerLabError("The rater name is longer than 100 characters; use a shorter name.")
    return name
