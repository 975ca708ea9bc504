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
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import CHOICES, Experiment, Generation
from db.store import Store
from engine.errors import SteerLabError
from engine.spec import DEFAULT_RATING_OVERLAP
from service import audit
from service.access import LOCAL, AccessDenied, Identity, require
from service.catalog import get_experiment

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


class _Queue:
    """The rating queue's state for one experiment, kept per process and brought up to date
    incrementally: each request reads only the votes stored since the last one (a range
    of the ratings' primary key), never the whole table.

    It is rebuilt from the store when the outputs may have changed (the definition, the
    outputs' count or highest id, or the runs changed): votes disappear only with their
    outputs. Every ``RECOUNT_SECONDS`` the votes are counted too, in case one was committed
    with a lower id than one already read. So it answers as a fresh scan of the store would.
    """

    def __init__(self, rows: list[tuple[int, int, int, int]], overlap: float, generations: tuple[object, ...]) -> None:
        self.overlap = overlap
        self.generations = generations
        self.items = _items(rows)
        self.item_set = set(self.items)
        self.shared_set = {p for p in self.items if is_shared(p, overlap)}
        self.shared = [p for p in self.items if p in self.shared_set]
        self.others = [p for p in self.items if p not in self.shared_set]
        self.counts: Counter[Pair] = Counter()  # votes per pair, all raters
        self.by_count: dict[int, set[Pair]] = {}  # pairs with exactly that many votes (one or more)
        self.raters: dict[Pair, set[str]] = {}
        self.by_rater: dict[str, set[Pair]] = {}
        self.rater_items: Counter[str] = Counter()  # items each rater rated
        self.rater_shared: Counter[str] = Counter()  # shared items each rater rated
        self.rated_shared = 0  # shared items with a vote
        self.rated_others = 0
        self.shared_by_several = 0  # shared items rated by two or more raters
        self.votes = 0
        self.last_id = 0
        self.counted_at = time.monotonic()

    def add(self, votes: list[tuple[int, str, int, int]]) -> None:
        for rating_id, rater, low, high in votes:
            pair = (low, high)
            before = self.counts[pair]
            self.counts[pair] = before + 1
            if before:
                self.by_count[before].discard(pair)
            self.by_count.setdefault(before + 1, set()).add(pair)
            if before == 0 and pair in self.item_set:
                if pair in self.shared_set:
                    self.rated_shared += 1
                else:
                    self.rated_others += 1
            raters = self.raters.setdefault(pair, set())
            if rater not in raters:
                raters.add(rater)
                if len(raters) == 2 and pair in self.shared_set:
                    self.shared_by_several += 1
            mine = self.by_rater.setdefault(rater, set())
            if pair not in mine:
                mine.add(pair)
                self.rater_items[rater] += pair in self.item_set
                self.rater_shared[rater] += pair in self.shared_set
            self.votes += 1
            self.last_id = max(self.last_id, rating_id)

    def rated_by(self, rater: str) -> set[Pair]:
        return self.by_rater.get(rater, set())

    def draw(self, rater: str, rng: random.Random) -> Pair | None:
        """The pair the queue serves next (see the module's docstring), or None when the rater rated all."""
        mine = self.rated_by(rater)
        shared_open = len(self.shared) > self.rater_shared[rater]
        others_open = len(self.others) > self.rater_items[rater] - self.rater_shared[rater]
        if not shared_open and not others_open:
            return None
        if shared_open and (not others_open or rng.random() < self.overlap):
            # Shared pairs already rated by others first: each such vote adds to the overlap at once.
            for count in sorted(self.by_count, reverse=True):
                pool = [p for p in self.by_count[count] if p in self.shared_set and p not in mine]
                if pool:
                    return rng.choice(sorted(pool))
            return self._unrated(self.shared, rng)
        if len(self.others) > self.rated_others:  # some pair nobody rated: those are the least rated
            return self._unrated(self.others, rng)
        for count in sorted(self.by_count):
            pool = [
                p for p in self.by_count[count] if p in self.item_set and p not in self.shared_set and p not in mine
            ]
            if pool:
                return rng.choice(sorted(pool))
        return None

    def _unrated(self, items: list[Pair], rng: random.Random) -> Pair:
        """A uniformly drawn pair of ``items`` without votes (there is one): a few random probes,
        which almost always hit while most pairs are unrated, else the full list."""
        for _ in range(64):
            pair = rng.choice(items)
            if not self.counts[pair]:
                return pair
        return rng.choice([p for p in items if not self.counts[p]])


_queues: dict[tuple[str, int], _Queue] = {}
_queues_lock = threading.Lock()
RECOUNT_SECONDS = 10.0


def _queue(store: Store, experiment_name: str) -> tuple[_Queue, int]:
    """The experiment's up-to-date queue state, and the experiment's id."""
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        overlap = _settings(experiment)[0]
        # Outputs are deleted and regenerated only by a definition change and a run: with
        # the definition and the runs in the version, a reused id cannot hide a change.
        generations = (experiment.spec_json, *repo.generation_version(session, experiment.id))
        key = (store.url, experiment.id)
        with _queues_lock:
            queue = _queues.get(key)
            if queue is None or queue.generations != generations or queue.overlap != overlap:
                queue = _fresh_queue(session, experiment.id, overlap, generations)
            else:
                queue.add(repo.votes_after(session, experiment.id, queue.last_id))
                # Votes go away only with their outputs (which changes ``generations``); a vote
                # committed with a lower id than one already seen (possible on PostgreSQL) is
                # caught by a recount now and then, which costs a scan of the experiment's votes.
                if time.monotonic() - queue.counted_at > RECOUNT_SECONDS:
                    if repo.rating_version(session, experiment.id)[0] != queue.votes:
                        queue = _fresh_queue(session, experiment.id, overlap, generations)
                    queue.counted_at = time.monotonic()
            _queues[key] = queue
            return queue, experiment.id


def _settings(experiment: Experiment) -> tuple[float, bool]:
    """(rating_overlap, reveal_after_vote) of the stored definition, read without validating all of it
    (that takes longer than the rest of a vote; the definition was validated when it was stored)."""
    data = json.loads(experiment.spec_json)
    return float(data.get("rating_overlap", DEFAULT_RATING_OVERLAP)), bool(data.get("reveal_after_vote", False))


def _fresh_queue(session: Session, experiment_id: int, overlap: float, generations: tuple[object, ...]) -> _Queue:
    queue = _Queue(repo.generation_keys(session, experiment_id), overlap, generations)
    queue.add(repo.votes_after(session, experiment_id, 0))
    return queue


def next_item(
    store: Store, experiment_name: str, rater: str, rng: random.Random | None = None, who: Identity = LOCAL
) -> RatingItem | None:
    """The next pair for this rater, sides drawn at random; None when the rater has rated every pair."""
    rater = _rater_for(store, who, experiment_name, rater)
    rng = rng or random.Random()
    queue, _ = _queue(store, experiment_name)
    with _queues_lock:
        pair = queue.draw(rater, rng)
    if pair is None:
        return None
    low, high = pair
    left_id, right_id = (low, high) if rng.random() < 0.5 else (high, low)
    with store.session() as session:
        shown = repo.shown_generations(session, [left_id, right_id])
    left, right = shown[left_id], shown[right_id]
    return RatingItem(
        experiment_name,
        left.prompt,
        left.id,
        right.id,
        left.text,
        right.text,
        left.variant,
        right.variant,
        is_shared((low, high), queue.overlap),
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
            return _settings(experiment)[1]
    except IntegrityError as exc:
        raise SteerLabError(
            f"Rater '{rater}' has already rated this pair (perhaps in another tab); the vote was not stored twice."
        ) from exc


def progress(store: Store, experiment_name: str, rater: str) -> RatingProgress:
    queue, _ = _queue(store, experiment_name)
    with _queues_lock:
        mine = queue.rater_items[rater.strip()]
        return RatingProgress(
            rater_votes=mine,
            rater_remaining=len(queue.items) - mine,
            items=len(queue.items),
            items_rated=queue.rated_shared + queue.rated_others,
            votes=queue.votes,
            shared_items=len(queue.shared),
            shared_rated_by_several=queue.shared_by_several,
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
