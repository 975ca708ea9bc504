"""Pairs shown to a rater a second time (service.rating's repeats), in a real store (SQLite and PostgreSQL).

The store holds an experiment's outputs as a run stores them (through the repository); the
texts do not matter to the queue, so no model runs here. Every vote goes through the queue
and record_vote, and is checked in the store.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from db import repository as repo
from db import runs
from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where
from engine.spec import parse_experiment
from service import rating
from service.catalog import get_experiment, import_experiment
from service.rating import REPEAT_GAP, next_item, progress, record_vote, repeat_gap
from tests.conftest import ROOT

NAME = "repeats"
VARIANTS, PROMPTS, SAMPLES = 4, 10, 2
ITEMS = PROMPTS * SAMPLES * VARIANTS * (VARIANTS - 1) // 2  # pairs of variants per (prompt, sample): 120

pytestmark = pytest.mark.both_stores


def build(store: Store, repeat_share: float) -> Store:
    raw = {
        "name": NAME,
        "model": "m",
        "prompts": [f"Story {i}:" for i in range(PROMPTS)],
        "generation": {"do_sample": True, "samples_per_prompt": SAMPLES},
        "variants": [{"name": "baseline"}] + [{"name": f"v{i}", "prefix": f"Style {i}. "} for i in range(1, VARIANTS)],
        "statistics": {"repeat_share": repeat_share},
    }
    spec = parse_experiment(raw, Where("repeats.yaml"))
    with store.session() as session:
        experiment = import_experiment(session, spec, "repeats.yaml", {})
        total = PROMPTS * SAMPLES * VARIANTS
        run = runs.start_run(session, experiment, total, 0, total, "cpu", "float32", "test")
        rows = [
            repo.NewGeneration(v.id, p.id, s, f"{v.name} {p.text} {s}", 5, 0.1, 0)
            for p in experiment.prompts
            for s in range(SAMPLES)
            for v in experiment.variants
        ]
        repo.record_batch(session, experiment.id, run.id, rows)
        runs.finish_run(session, run.id, "done")
    return store


def stored_votes(store: Store) -> list[tuple[str, int, int, int, int, str]]:
    """(rater, left id, right id, lower id, repeat, choice) of every vote, in order (plain SQL)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT rater, left_generation_id, right_generation_id, pair_low_id, repeat, choice "
                "FROM ratings ORDER BY id"
            )
        )
        return [tuple(r) for r in rows]


def rate_everything(store: Store, rater: str, seed: int) -> list[tuple[tuple[int, int], int, int]]:
    """Vote on whatever the queue serves until it serves nothing: (pair, repeat, left id) per showing."""
    rng, shown = random.Random(seed), []
    while (item := next_item(store, NAME, rater, rng)) is not None:
        pair = (min(item.left_id, item.right_id), max(item.left_id, item.right_id))
        shown.append((pair, item.repeat, item.left_id))
        record_vote(
            store, NAME, rater, item.left_id, item.right_id, rng.choice(("left", "right", "tie")), repeat=item.repeat
        )
        assert len(shown) <= 2 * ITEMS, "the queue never ends"
    return shown


def test_which_pairs_come_again_and_when_is_a_stable_hash_near_the_share() -> None:
    pairs = [(i, i + 1 + j) for i in range(4000) for j in range(5)]
    gaps = [repeat_gap("ann", p, 0.05) for p in pairs]
    chosen = [g for g in gaps if g is not None]
    assert 0.045 < len(chosen) / len(pairs) < 0.055  # 20,000 pairs: the share within 10% of 0.05
    assert set(chosen) == set(range(REPEAT_GAP[0], REPEAT_GAP[1] + 1)), "gaps of 8 to 20 other pairs"
    assert gaps == [repeat_gap("ann", p, 0.05) for p in pairs], "stable: the same in every process"
    bob = {p for p in pairs if repeat_gap("bob", p, 0.05) is not None}
    assert bob != {p for p, g in zip(pairs, gaps, strict=True) if g is not None}, "each rater their own pairs"
    assert all(repeat_gap("ann", p, 0.0) is None for p in pairs[:2000]), "0 turns repeats off"


def test_a_rater_sees_some_pairs_again_later_with_the_sides_drawn_again(store: Store) -> None:
    build(store, 0.2)
    shown = rate_everything(store, "ann", seed=1)
    firsts = [pair for pair, repeat, _ in shown if not repeat]
    assert len(firsts) == len(set(firsts)) == ITEMS, "every pair once as a first showing"
    position = {pair: i for i, pair in enumerate(firsts, start=1)}  # the rater's n-th pair
    # Shown again: exactly the rater's chosen pairs whose gap ended before the rater ran out of pairs.
    expected = {p for p in firsts if (g := repeat_gap("ann", p, 0.2)) is not None and position[p] + g <= ITEMS}
    repeats = [(i, pair, left) for i, (pair, repeat, left) in enumerate(shown) if repeat]
    assert {pair for _, pair, _ in repeats} == expected and len(repeats) == len(expected) > 10
    for i, pair, _ in repeats:
        earlier = sum(1 for p, repeat, _ in shown[:i] if not repeat)  # first showings before this repeat
        gap = repeat_gap("ann", pair, 0.2)
        assert gap is not None and earlier >= position[pair] + gap >= position[pair] + REPEAT_GAP[0]
    first_left = {pair: left for pair, repeat, left in shown if not repeat}
    assert any(first_left[pair] != left for _, pair, left in repeats), "sides drawn again"
    assert max(Counter(pair for pair, _, _ in shown).values()) == 2, "never a third time"
    # In the store: a repeat row per repeat, each after the rater's first vote on the pair.
    votes = stored_votes(store)
    assert Counter(v[4] for v in votes) == {0: ITEMS, 1: len(expected)}
    firsts_stored = {(v[0], v[3]) for v in votes if v[4] == 0}
    assert all((v[0], v[3]) in firsts_stored for v in votes if v[4] == 1)
    # Progress counts pairs, not showings: a repeat is not a new item.
    p = progress(store, NAME, "ann")
    assert (p.rater_votes, p.rater_remaining, p.items, p.items_rated, p.votes) == (
        ITEMS,
        0,
        ITEMS,
        ITEMS,
        ITEMS + len(expected),
    )


def test_without_repeats_a_rater_sees_each_pair_once(store: Store) -> None:
    build(store, 0.0)
    shown = rate_everything(store, "ann", seed=2)
    assert len(shown) == ITEMS and not any(repeat for _, repeat, _ in shown)
    assert {v[4] for v in stored_votes(store)} == {0}


def test_a_due_repeat_is_served_again_after_a_restart(store: Store) -> None:
    build(store, 0.2)
    rng = random.Random(3)
    while (item := next_item(store, NAME, "ann", rng)) is not None and not item.repeat:
        record_vote(store, NAME, "ann", item.left_id, item.right_id, "left")
    assert item is not None and item.repeat == 1
    pair = {item.left_id, item.right_id}
    rating._queues.clear()  # a new process: the queue is rebuilt from the store
    again = next_item(store, NAME, "ann", rng)
    assert again is not None and again.repeat == 1 and {again.left_id, again.right_id} == pair


def test_repeat_votes_are_checked(store: Store) -> None:
    build(store, 0.2)
    rng = random.Random(4)
    first = next_item(store, NAME, "ann", rng)
    assert first is not None and first.repeat == 0
    with pytest.raises(SteerLabError, match=r"has not rated outputs .* before, so this cannot be a repeat"):
        record_vote(store, NAME, "ann", first.left_id, first.right_id, "left", repeat=1)
    with pytest.raises(SteerLabError, match=r"Repeat 2 is neither 0 .* nor 1"):
        record_vote(store, NAME, "ann", first.left_id, first.right_id, "left", repeat=2)
    record_vote(store, NAME, "ann", first.left_id, first.right_id, "left")
    record_vote(store, NAME, "ann", first.right_id, first.left_id, "tie", repeat=1)  # sides swapped: the same pair
    for repeat in (0, 1):
        with pytest.raises(SteerLabError, match="has already rated this pair"):
            record_vote(store, NAME, "ann", first.left_id, first.right_id, "right", repeat=repeat)
    assert [(v[4], v[5]) for v in stored_votes(store)] == [(0, "left"), (1, "tie")]


def test_the_rate_page_stores_a_repeat_as_a_repeat(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    build(store, 0.2)
    with store.session() as session:  # ann has rated every pair (in id order): some repeats are due
        experiment = get_experiment(session, NAME)
        pairs = sorted(rating._items(repo.generation_keys(session, experiment.id))[0])
        repo.add_ratings(session, experiment.id, [repo.NewRating("ann", low, high, "left") for low, high in pairs])
    monkeypatch.setenv("STEERLAB_DB", store.url)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/rate.py")
    at.run()
    at.text_input[0].set_value("ann")
    next(b for b in at.button if b.label == "Start rating").click().run()
    assert not at.exception
    next(b for b in at.button if b.label == "B is better").click().run()
    assert not at.exception and not at.warning, "the vote was taken"
    added: Any = stored_votes(store)[len(pairs) :]
    assert [(v[0], v[4], v[5]) for v in added] == [("ann", 1, "right")]
