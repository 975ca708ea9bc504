"""Blind pairwise rating: serve pairs, record votes with their sides.

An *item* is two generations of two different variants for the same prompt and sample.
A rater gets an item once (in either order), except for the few shown again on purpose
(below): the database holds one vote per (experiment, rater, pair, showing) and refuses a
second one, whichever tab or process sends it. The side each generation is shown on is
drawn per showing and stored with the vote.

Queue: a share of the items (``rating_overlap`` of the experiment, chosen by a stable hash)
is shown to every rater, so their agreement can be measured; the rest go least-rated
first, so votes spread over the items.

Repeats: a share of each rater's pairs (``statistics.repeat_share``, chosen by a stable hash
of the rater and the pair) is shown to them a second time, 8 to 20 of their other pairs
later (so never the pair just rated), with the sides drawn again, and stored with
``repeat=1``: how often a rater agrees with themselves measures their consistency. A pair
is never shown a third time, and a repeat is not a new item in the progress counts. A
repeat not yet due when the rater has rated every other pair is not shown.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from itertools import combinations
from typing import NamedTuple

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import CHOICES, JUDGE_RATER_PREFIX, Experiment, Generation
from db.store import Store
from engine.errors import SteerLabError
from engine.null_arms import arm_name
from engine.spec import DEFAULT_RATING_OVERLAP
from engine.statistics_spec import DEFAULT_REPEAT_SHARE
from service import audit
from service.access import LOCAL, AccessDenied, Identity, require
from service.catalog import get_experiment

CHOICE_LABELS = {"left": "A is better", "right": "B is better", "tie": "Tie", "both_bad": "Both bad"}
MAX_RATER_NAME = 100
HUMAN = "human"  # the queue serves people: judges' votes neither fill it nor count in its progress
# A repeat comes after this many (fewest, most) of the rater's other pairs: late enough that the
# first showing is not fresh in mind, early enough that most raters get there.
REPEAT_GAP = (8, 20)

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
    repeat: int = 0  # 1: this rater has rated this pair before, and is shown it again (see the module's docstring)


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


def repeat_gap(rater: str, pair: Pair, share: float) -> int | None:
    """How many of the rater's other pairs come between their first vote on ``pair`` and its repeat,
    or None when the pair is not repeated for this rater: a stable hash of both, so the same in
    every process and after a restart."""
    if share <= 0:
        return None
    digest = hashlib.sha256(f"repeat:{rater}:{pair[0]}-{pair[1]}".encode()).digest()
    if int.from_bytes(digest[:4], "big") / 2**32 >= share:
        return None
    fewest, most = REPEAT_GAP
    return fewest + int.from_bytes(digest[4:8], "big") % (most - fewest + 1)


def _items(
    rows: list[tuple[int, int, int, int]], deciding: Collection[frozenset[int]] = ()
) -> tuple[list[Pair], set[Pair]]:
    """Pairs of generations of different variants for the same (prompt, sample), and those of them
    whose two variants' positions form one of the ``deciding`` pairs (see :func:`_deciding`)."""
    by_row: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for generation_id, prompt_id, sample, variant_position in rows:
        by_row.setdefault((prompt_id, sample), []).append((variant_position, generation_id))
    pairs: list[Pair] = []
    decisive: set[Pair] = set()
    for row in by_row.values():
        for (pa, a), (pb, b) in combinations(sorted(row), 2):
            pair = (min(a, b), max(a, b))
            pairs.append(pair)
            if frozenset((pa, pb)) in deciding:
                decisive.add(pair)
    return pairs, decisive


def _deciding(session: Session, experiment_id: int) -> set[frozenset[int]]:
    """Variant position pairs whose votes decide something on Compare: each variant against the
    baseline (the verdicts), and each null arm against its real variant (the Null arms tab).

    Unrated pairs of these are served first: with 9 variants a row has 36 pairs, 8 of them against
    the baseline, and spreading votes evenly would leave every verdict waiting for thousands of votes.
    """
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        return set()
    position = {v.name: v.position for v in experiment.variants}
    baselines = [v.position for v in experiment.variants if v.kind == "baseline"]
    out = {frozenset((b, p)) for b in baselines for p in position.values() if p != b}
    for variant in json.loads(experiment.spec_json).get("variants", []):
        arms = variant.get("null_arms") or []
        for arm in arms if isinstance(arms, list) else ():
            name = arm_name(str(variant.get("name", "")), str(arm))
            if name in position and variant.get("name") in position:
                out.add(frozenset((position[variant["name"]], position[name])))
    return out


class _Queue:
    """The rating queue's state for one experiment, kept per process and brought up to date
    incrementally: each request reads only the votes stored since the last one (a range
    of the ratings' primary key), never the whole table.

    It is rebuilt from the store when the outputs may have changed (the definition, the
    outputs' count or highest id, or the runs changed): votes disappear only with their
    outputs. Every ``RECOUNT_SECONDS`` the votes are counted too, in case one was committed
    with a lower id than one already read. So it answers as a fresh scan of the store would.
    """

    def __init__(
        self,
        rows: list[tuple[int, int, int, int]],
        overlap: float,
        generations: tuple[object, ...],
        repeat_share: float = 0.0,
        deciding: Collection[frozenset[int]] = (),
    ) -> None:
        self.overlap = overlap
        self.repeat_share = repeat_share
        self.generations = generations
        self.items, self.decisive = _items(rows, deciding)
        self.item_set = set(self.items)
        self.shared_set = {p for p in self.items if is_shared(p, overlap)}
        self.shared = [p for p in self.items if p in self.shared_set]
        self.others = [p for p in self.items if p not in self.shared_set]
        # The deciding pairs of each pool, served first while some are unrated.
        self.shared_first = [p for p in self.shared if p in self.decisive]
        self.others_first = [p for p in self.others if p in self.decisive]
        self.rated_first: Counter[str] = Counter()  # "shared" / "others": deciding pairs with a vote
        self.counts: Counter[Pair] = Counter()  # votes per pair, all raters
        self.by_count: dict[int, set[Pair]] = {}  # pairs with exactly that many votes (one or more)
        self.raters: dict[Pair, set[str]] = {}
        self.by_rater: dict[str, set[Pair]] = {}
        self.rater_items: Counter[str] = Counter()  # items each rater rated
        self.rater_shared: Counter[str] = Counter()  # shared items each rater rated
        # Per rater: pairs to show again -> how many distinct pairs the rater must have rated by then.
        self.due: dict[str, dict[Pair, int]] = {}
        self.repeated: dict[str, set[Pair]] = {}  # per rater: pairs already shown again
        self.rated_shared = 0  # shared items with a vote
        self.rated_others = 0
        self.shared_by_several = 0  # shared items rated by two or more raters
        self.votes = 0
        self.last_id = 0
        self.ids: set[int] = set()  # the votes counted, so that none is counted twice
        self.counted_at = time.monotonic()

    def add(self, votes: list[tuple[int, str, int, int, int]], advance: bool = True) -> None:
        """Count ``votes`` (each once); ``advance=False`` for a vote this process just stored, which
        must not move ``last_id`` past votes of others not yet read (ids commit out of order)."""
        for rating_id, rater, low, high, repeat in votes:
            if rating_id in self.ids:
                continue
            self.ids.add(rating_id)
            pair = (low, high)
            if repeat:
                self.repeated.setdefault(rater, set()).add(pair)
                self.due.get(rater, {}).pop(pair, None)
            before = self.counts[pair]
            self.counts[pair] = before + 1
            if before:
                self.by_count[before].discard(pair)
            self.by_count.setdefault(before + 1, set()).add(pair)
            if before == 0 and pair in self.item_set:
                pool = "shared" if pair in self.shared_set else "others"
                if pool == "shared":
                    self.rated_shared += 1
                else:
                    self.rated_others += 1
                if pair in self.decisive:
                    self.rated_first[pool] += 1
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
                gap = repeat_gap(rater, pair, self.repeat_share)
                if gap is not None and pair not in self.repeated.get(rater, ()):
                    self.due.setdefault(rater, {})[pair] = len(mine) + gap
            self.votes += 1
            if advance:
                self.last_id = max(self.last_id, rating_id)

    def rated_by(self, rater: str) -> set[Pair]:
        return self.by_rater.get(rater, set())

    def draw(self, rater: str, rng: random.Random) -> tuple[Pair, int] | None:
        """The pair the queue serves next and whether it is a repeat (1) or not (0), see the module's
        docstring; None when the rater rated all (and no repeat is due)."""
        mine = self.rated_by(rater)
        due = [(at, p) for p, at in self.due.get(rater, {}).items() if at <= len(mine) and p in self.item_set]
        if due:
            return min(due)[1], 1  # the longest due first
        pair = self._new_pair(rater, mine, rng)
        return None if pair is None else (pair, 0)

    def _new_pair(self, rater: str, mine: set[Pair], rng: random.Random) -> Pair | None:
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
            if len(self.shared_first) > self.rated_first["shared"]:
                return self._unrated(self.shared_first, rng)
            return self._unrated(self.shared, rng)
        if len(self.others) > self.rated_others:  # some pair nobody rated: those are the least rated
            if len(self.others_first) > self.rated_first["others"]:  # deciding ones first
                return self._unrated(self.others_first, rng)
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
        settings = _settings(experiment)
        overlap, repeat_share = settings.overlap, settings.repeat_share
        # Outputs are deleted and regenerated only by a definition change and a run: with
        # the definition and the runs in the version, a reused id cannot hide a change.
        generations = (experiment.spec_json, *repo.generation_version(session, experiment.id))
        key = (store.url, experiment.id)
        with _queues_lock:
            queue = _queues.get(key)
            if (
                queue is None
                or queue.generations != generations
                or (queue.overlap, queue.repeat_share) != (overlap, repeat_share)
            ):
                queue = _fresh_queue(session, experiment.id, overlap, generations, repeat_share)
            else:
                queue.add(repo.votes_after(session, experiment.id, queue.last_id, HUMAN))
                # Votes go away only with their outputs (which changes ``generations``); a vote
                # committed with a lower id than one already seen (possible on PostgreSQL) is
                # caught by a recount now and then, which costs a scan of the experiment's votes.
                if time.monotonic() - queue.counted_at > RECOUNT_SECONDS:
                    if repo.rating_version(session, experiment.id, HUMAN)[0] != queue.votes:
                        queue = _fresh_queue(session, experiment.id, overlap, generations, repeat_share)
                    queue.counted_at = time.monotonic()
            _queues[key] = queue
            return queue, experiment.id


class _Settings(NamedTuple):
    overlap: float  # rating_overlap
    reveal: bool  # reveal_after_vote
    repeat_share: float  # statistics.repeat_share


def _settings(experiment: Experiment) -> _Settings:
    """The rating settings of the stored definition, read without validating all of it (that takes
    longer than the rest of a vote; the definition was validated when it was stored)."""
    data = json.loads(experiment.spec_json)
    return _Settings(
        float(data.get("rating_overlap", DEFAULT_RATING_OVERLAP)),
        bool(data.get("reveal_after_vote", False)),
        float(data.get("statistics", {}).get("repeat_share", DEFAULT_REPEAT_SHARE)),
    )


def _fresh_queue(
    session: Session, experiment_id: int, overlap: float, generations: tuple[object, ...], repeat_share: float
) -> _Queue:
    queue = _Queue(
        repo.generation_keys(session, experiment_id),
        overlap,
        generations,
        repeat_share,
        _deciding(session, experiment_id),
    )
    queue.add(repo.votes_after(session, experiment_id, 0, HUMAN))
    return queue


def next_item(
    store: Store, experiment_name: str, rater: str, rng: random.Random | None = None, who: Identity = LOCAL
) -> RatingItem | None:
    """The next pair for this rater (a pair shown again has ``repeat=1``), sides drawn at random;
    None when the rater has rated every pair."""
    rater = _rater_for(store, who, experiment_name, rater)
    rng = rng or random.Random()
    queue, _ = _queue(store, experiment_name)
    with _queues_lock:
        drawn = queue.draw(rater, rng)
    if drawn is None:
        return None
    (low, high), repeat = drawn
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
        repeat,
    )


def record_vote(
    store: Store,
    experiment_name: str,
    rater: str,
    left_id: int,
    right_id: int,
    choice: str,
    who: Identity = LOCAL,
    repeat: int = 0,
) -> bool:
    """Store one vote; returns whether the experiment reveals variant names after a vote.

    ``repeat`` is the showing's (:attr:`RatingItem.repeat`): 1 for a pair shown to the rater again.
    Raises :class:`SteerLabError` when the two outputs are not a pair of this experiment, when
    this rater has voted on this showing of the pair already (from this tab or another), or
    when a repeat comes without the rater's first vote on the pair.
    """
    rater = _rater_for(store, who, experiment_name, rater)
    if choice not in CHOICES:
        raise SteerLabError(f"Choice '{choice}' is not one of {', '.join(CHOICES)}; pick one of those.")
    if repeat not in (0, 1):
        raise SteerLabError(
            f"Repeat {repeat!r} is neither 0 (a first showing) nor 1 (a pair shown again); reload the page."
        )
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
            if repeat and not repo.has_first_vote(session, experiment.id, rater, left_id, right_id):
                raise SteerLabError(
                    f"Rater '{rater}' has not rated outputs {left_id} and {right_id} before, so this cannot be "
                    "a repeat; reload the page for a new pair."
                )
            rating = repo.add_rating(session, experiment.id, rater, left_id, right_id, choice, repeat=repeat)
            audit.record(
                session,
                who.user if who.signed_in else rater,
                "rated",
                experiment_name,
                f"{choice} on outputs {left_id}/{right_id}" + (" (shown again)" if repeat else ""),
            )
            reveal = _settings(experiment).reveal
            vote = (rating.id, rater, rating.pair_low_id, rating.pair_high_id, repeat)
            key = (store.url, experiment.id)
    except IntegrityError as exc:
        raise SteerLabError(
            f"Rater '{rater}' has already rated this pair (perhaps in another tab); the vote was not stored twice."
        ) from exc
    # Committed: this process's queue counts the vote now. Reading it back by id is not enough
    # on PostgreSQL, where ids commit out of order: another tab's newer vote may already have
    # moved the queue past this one, and the rater would be served this pair again.
    with _queues_lock:
        queue = _queues.get(key)
        if queue is not None:
            queue.add([vote], advance=False)
    return reveal


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
    if name.lower().startswith(JUDGE_RATER_PREFIX):
        raise SteerLabError(
            f"Rater names starting with '{JUDGE_RATER_PREFIX}' are kept for LLM judges; type your own name."
        )
    return name
