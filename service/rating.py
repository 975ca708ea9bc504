"""Blind pairwise rating: serve pairs, record votes with their sides.

An *item* is two generations of two different variants for the same prompt and sample.
A rater never gets an item twice (in either order): the database holds one vote per
(experiment, rater, pair) and refuses a second one, whichever tab or process sends it.
The side each generation is shown on is drawn per item and stored with the vote.

Queue: a share of the items (``rating_overlap`` of the experiment, chosen by a stable hash)
is shown to every rater, so their agreement can be measured; the rest go least-rated
first, so votes spread over the items.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from sqlalchemy.exc import IntegrityError

from db import repository as repo
from db.schema import CHOICES, Generation
from db.store import Store
from engine.errors import SteerLabError
from service import audit
from service.access import LOCAL, AccessDenied, Identity, require
from service.catalog import get_experiment, stored_spec

CHOICE_LABELS = {"left": "A is better", "right": "B is better", "tie": "Tie", "both_bad": "Both bad"}
MAX_RATER_NAME = 100

Pair = tuple[int, int]  # two generation ids, lower first


@dataclass(frozen=True)
class RatingItem:
    experiment: str  # the experiment whose outputs these are: a vote goes there and nowhere else
    prompt: str
    left_id: int
    right_id: int
    left_text: str
    right_text: str
    left_variant: str  # only shown after the vote, and only if the experiment allows it
    right_variant: str
    shared: bool  # one of the pairs every rater sees


@dataclass(frozen=True)
class RatingProgress:
    rater_votes: int
    rater_remaining: int
    items: int
    items_rated: int
    votes: int
    shared_items: int  # pairs every rater is shown
    shared_rated_by_several: int  # shared pairs that two or more raters have rated


def is_shared(pair: Pair, overlap: float) -> bool:
    """Whether a pair is in the set every rater sees: a stable hash, the same for every rater and run."""
    digest = hashlib.sha256(f"{pair[0]}-{pair[1]}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < overlap


def _items(rows: list[tuple[int, int, int, int]]) -> list[Pair]:
    """Pairs of generations of different variants for the same (prompt, sample)."""
    by_row: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for generation_id, prompt_id, sample, variant_position in rows:
        by_row.setdefault((prompt_id, sample), []).append((variant_position, generation_id))
    pairs: list[Pair] = []
    for row in by_row.values():
        for (_, a), (_, b) in combinations(sorted(row), 2):
            pairs.append((min(a, b), max(a, b)))
    return pairs


@dataclass(frozen=True)
class _State:
    items: list[Pair]
    counts: Counter[Pair]  # votes per pair, all raters
    raters_per_pair: dict[Pair, set[str]]
    overlap: float


def _state(store: Store, experiment_name: str) -> _State:
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        overlap = stored_spec(experiment).rating_overlap
        items = _items(repo.generation_keys(session, experiment.id))
        votes = repo.vote_pairs(session, experiment.id)
    counts: Counter[Pair] = Counter()
    raters: dict[Pair, set[str]] = {}
    for rater, low, high in votes:
        counts[(low, high)] += 1
        raters.setdefault((low, high), set()).add(rater)
    return _State(items, counts, raters, overlap)


def next_item(
    store: Store, experiment_name: str, rater: str, rng: random.Random | None = None, who: Identity = LOCAL
) -> RatingItem | None:
    """The next pair for this rater, sides drawn at random; None when the rater has rated every pair."""
    rater = _rater_for(store, who, experiment_name, rater)
    rng = rng or random.Random()
    state = _state(store, experiment_name)
    open_items = [p for p in state.items if rater not in state.raters_per_pair.get(p, ())]
    if not open_items:
        return None
    shared = [p for p in open_items if is_shared(p, state.overlap)]
    others = [p for p in open_items if not is_shared(p, state.overlap)]
    if shared and (not others or rng.random() < state.overlap):
        # Shared pairs already rated by others first: each such vote adds to the overlap at once.
        most = max(state.counts[p] for p in shared)
        pool = [p for p in shared if state.counts[p] == most]
    else:
        fewest = min(state.counts[p] for p in others)
        pool = [p for p in others if state.counts[p] == fewest]
    low, high = rng.choice(pool)
    left_id, right_id = (low, high) if rng.random() < 0.5 else (high, low)
    with store.session() as session:
        left, right = session.get(Generation, left_id), session.get(Generation, right_id)
        assert left is not None and right is not None
        return RatingItem(
            experiment_name,
            left.prompt.text,
            left.id,
            right.id,
            left.text,
            right.text,
            left.variant.name,
            right.variant.name,
            is_shared((low, high), state.overlap),
        )


def record_vote(
    store: Store,
    experiment_name: str,
    rater: str,
    left_id: int,
    right_id: int,
    choice: str,
    who: Identity = LOCAL,
) -> bool:
    """Store one vote; returns whether the experiment reveals variant names after a vote.

    Raises :class:`SteerLabError` when the two outputs are not a pair of this experiment
    or when this rater has voted on the pair already (from this tab or another).
    """
    rater = _rater_for(store, who, experiment_name, rater)
    if choice not in CHOICES:
        raise SteerLabError(f"Choice '{choice}' is not one of {', '.join(CHOICES)}; pick one of those.")
    try:
        with store.session() as session:
            experiment = get_experiment(session, experiment_name)
            left, right = session.get(Generation, left_id), session.get(Generation, right_id)
            if left is None or right is None or {left.experiment_id, right.experiment_id} != {experiment.id}:
                raise SteerLabError(
                    f"Outputs {left_id} and {right_id} are not both outputs of experiment '{experiment_name}' "
                    "(they were deleted or changed); reload the page for a new pair."
                )
            same_row = (left.prompt_id, left.sample_index) == (right.prompt_id, right.sample_index)
            if not same_row or left.variant_id == right.variant_id:
                raise SteerLabError(
                    "Those two outputs do not answer the same prompt and sample with two variants; reload the page."
                )
            repo.add_rating(session, experiment.id, rater, left_id, right_id, choice)
            audit.record(
                session,
                who.user if who.signed_in else rater,
                "rated",
                experiment_name,
                f"{choice} on outputs {left_id}/{right_id}",
            )
            return stored_spec(experiment).reveal_after_vote
    except IntegrityError as exc:
        raise SteerLabError(
            f"Rater '{rater}' has already rated this pair (perhaps in another tab); the vote was not stored twice."
        ) from exc


def progress(store: Store, experiment_name: str, rater: str) -> RatingProgress:
    state = _state(store, experiment_name)
    name = rater.strip()
    mine = sum(1 for p in state.items if name in state.raters_per_pair.get(p, ()))
    shared = [p for p in state.items if is_shared(p, state.overlap)]
    return RatingProgress(
        rater_votes=mine,
        rater_remaining=len(state.items) - mine,
        items=len(state.items),
        items_rated=sum(1 for p in state.items if state.counts[p]),
        votes=sum(state.counts.values()),
        shared_items=len(shared),
        shared_rated_by_several=sum(1 for p in shared if len(state.raters_per_pair.get(p, ())) >= 2),
    )


def _rater_for(store: Store, who: Identity, experiment_name: str, rater: str) -> str:
    """The name a vote is stored under: the sign-in's address when signed in, never another's."""
    require(store, who, experiment_name, "rater", "rating")
    if who.signed_in:
        if rater.strip() and rater.strip() != who.user:
            raise AccessDenied(f"You are signed in as {who.user}; you cannot rate as '{rater.strip()[:80]}'.")
        return who.user
    return check_rater(rater)


def check_rater(rater: str) -> str:
    name = rater.strip()
    if not name:
        raise SteerLabError("The rater name is empty; type your name before rating.")
    if len(name) > MAX_RATER_NAME:
        raise SteerLabError(f"The rater name is longer than {MAX_RATER_NAME} characters; use a shorter name.")
    if any(not ch.isprintable() for ch in name):
        raise SteerLabError("The rater name holds control characters; type it with letters, digits and spaces.")
    return name
