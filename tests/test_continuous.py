"""Continuous batching on the real TinyStories-656K model: rows join and leave a decoding batch,
and each row's text is what it would be alone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
import torch

from engine.continuous import ContinuousBatcher, RowRequest, RowResult
from engine.errors import SteerLabError
from engine.fields import Where
from engine.generation import Decoding, generate
from engine.methods.ablate import Ablate
from engine.methods.base import PositionMasks, PreparedEdit
from engine.methods.nudge import Nudge
from engine.models import LoadedModel
from engine.steering import BatchSteering
from tests.helpers import add_edit, random_vector, tokens

WAIT = 60.0  # seconds: a generous bound on a condition, never a sleep


@dataclass
class Collected:
    """One row's callbacks: its streamed tokens and its result."""

    streamed: list[int] = field(default_factory=list)
    result: RowResult | None = None
    done: threading.Event = field(default_factory=threading.Event)
    on_first: Callable[[], None] | None = None
    spy: Callable[[int], None] | None = None  # sees each token before it is recorded

    def token(self, token: int) -> None:
        if self.spy is not None:
            self.spy(token)
        self.streamed.append(token)
        if len(self.streamed) == 1 and self.on_first is not None:
            self.on_first()

    def finish(self, result: RowResult) -> None:
        self.result = result
        self.done.set()

    def wait(self) -> RowResult:
        assert self.done.wait(WAIT), "the row did not finish"
        assert self.result is not None
        return self.result


def submit(batcher: ContinuousBatcher, request: RowRequest) -> Collected:
    collected = Collected()
    batcher.submit(request, collected.token, collected.finish)
    return collected


def alone(model: LoadedModel, request: RowRequest, edits: Sequence[PreparedEdit] | None = None) -> list[int]:
    steering = BatchSteering(model, [list(request.edits if edits is None else edits)])
    seeds = [request.seed] if request.decoding.do_sample else None
    return generate(model, [list(request.prompt)], request.decoding, seeds=seeds, steering=steering)[0]


class FailingEdit(PreparedEdit):
    """Raises inside the forward pass: at prefill (``at_decode=False``) or at a decode step."""

    def __init__(self, at_decode: bool) -> None:
        self.layers = (0,)
        self.at_decode = at_decode

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        if (hidden.shape[1] == 1) == self.at_decode:
            raise RuntimeError("boom in the edit")
        return hidden


@pytest.fixture
def batcher(tiny: LoadedModel) -> Iterator[ContinuousBatcher]:
    b = ContinuousBatcher(tiny, max_rows=8)
    b.start()
    yield b
    b.close()


def test_rows_joining_a_running_batch_generate_what_they_generate_alone(
    tiny: LoadedModel, batcher: ContinuousBatcher
) -> None:
    vector = random_vector(tiny, scale=2.0)
    nudge = {"layer": 0, "target": "words", "words": ["dog"], "steps": 2, "reapply_every": 3}
    nudge_settings = Nudge.parse(nudge, Where("nudge"))
    texts = ["Once upon a time", "The dog was", "Lily and Tom went to the park and saw a big", "One day", "Tim"]
    prompts = [tuple(tokens(tiny, t)) for t in texts]
    greedy = Decoding(max_new_tokens=18, stop_at_eos=False)
    requests = [
        RowRequest(prompts[0], Decoding(max_new_tokens=24)),
        RowRequest(prompts[1], greedy, edits=(add_edit(tiny, vector, [0], 1.5),)),
        RowRequest(prompts[2], greedy, edits=(add_edit(tiny, vector, [1], -2.0, "generated"),)),
        RowRequest(prompts[3], greedy, edits=(Ablate("rand", (0, 1)).prepare(tiny, {"rand": vector}),)),
        RowRequest(prompts[4], Decoding(max_new_tokens=20, do_sample=True, temperature=0.9, top_p=0.9), seed=11),
        RowRequest(prompts[0], Decoding(max_new_tokens=10, do_sample=True, top_k=20), seed=5),
        RowRequest(prompts[1], greedy, edits=(nudge_settings.prepare(tiny, {}),)),
    ]
    # The first row decodes; the others join while it does (some in one group, some later).
    first = Collected()
    joined = threading.Event()
    first.on_first = joined.set
    batcher.submit(requests[0], first.token, first.finish)
    assert joined.wait(WAIT)
    rows = [first, *(submit(batcher, r) for r in requests[1:4])]
    joined.clear()
    rows[1].on_first = joined.set
    assert joined.wait(WAIT) or rows[1].done.is_set()
    rows += [submit(batcher, r) for r in requests[4:]]
    results = [row.wait() for row in rows]
    # A stateful edit is one object per request: the reference run gets its own.
    references = [alone(tiny, r) for r in requests[:-1]] + [
        alone(tiny, requests[-1], [nudge_settings.prepare(tiny, {})])
    ]
    for request, row, result, expected in zip(requests, rows, results, references, strict=True):
        assert list(result.tokens) == expected, request
        assert row.streamed == expected
        assert result.prompt_tokens == len(request.prompt)
        assert 0 <= result.queued_seconds <= result.first_token_seconds <= result.seconds
    assert results[1].finish_reason == "length"
    plain = alone(tiny, RowRequest(requests[1].prompt, greedy))
    assert list(results[1].tokens) != plain and list(results[-1].tokens) != plain  # the edits did steer
    stats = batcher.stats()
    assert stats["running"] == 0 and stats["cache_tokens"] == 0 and stats["cache_bytes"] == 0
    assert stats["generated_tokens"] == sum(len(r.tokens) for r in results)


def test_cancel_ends_a_row_and_the_cache_empties(tiny: LoadedModel, batcher: ContinuousBatcher) -> None:
    long = RowRequest(tuple(tokens(tiny, "Once upon a time")), Decoding(max_new_tokens=400, stop_at_eos=False))
    collected = Collected()
    handle = batcher.submit(long, collected.token, collected.finish)
    collected.on_first = handle.cancel
    result = collected.wait()
    assert result.finish_reason == "cancelled"
    assert 1 <= len(result.tokens) < 400
    so_far = Decoding(max_new_tokens=len(result.tokens), stop_at_eos=False)
    assert list(result.tokens) == alone(tiny, RowRequest(long.prompt, so_far))
    assert handle.done
    assert batcher.stats()["cache_bytes"] == 0


def test_leading_padding_is_dropped_when_the_longest_row_leaves(tiny: LoadedModel) -> None:
    batcher = ContinuousBatcher(tiny, max_rows=4)
    long_prompt = tuple(tokens(tiny, "Lily and Tom went to the park and saw a big red ball and a small dog " * 2))
    short_prompt = tuple(tokens(tiny, "Tim"))
    widths: list[float] = []
    long_row = submit(batcher, RowRequest(long_prompt, Decoding(max_new_tokens=6, stop_at_eos=False)))
    short = Collected(spy=lambda token: widths.append(batcher.stats()["cache_tokens"]))
    batcher.submit(RowRequest(short_prompt, Decoding(max_new_tokens=30, stop_at_eos=False)), short.token, short.finish)
    batcher.start()
    try:
        long_row.wait()
        short.wait()
    finally:
        batcher.close()
    # While both ran the cache was as wide as the long prompt; after it left, as wide as the short row
    # (the figures lag one step: stats are taken between steps).
    assert max(widths) >= 2 * len(long_prompt)
    assert widths[-1] <= len(short_prompt) + 30


def test_queue_limits_and_closing_answer_in_one_sentence(tiny: LoadedModel) -> None:
    batcher = ContinuousBatcher(tiny, max_rows=2, max_waiting=2)  # not started: requests wait
    request = RowRequest(tuple(tokens(tiny, "Tim")), Decoding(max_new_tokens=4))
    waiting = [submit(batcher, request) for _ in range(2)]
    with pytest.raises(SteerLabError, match=r"^The queue is full \(2 requests are waiting\); retry [^.]*\.$"):
        batcher.submit(request, lambda t: None, lambda r: None)
    with pytest.raises(SteerLabError, match="no tokens"):
        batcher.submit(RowRequest((), Decoding()), lambda t: None, lambda r: None)
    batcher.close()
    assert [row.wait().finish_reason for row in waiting] == ["cancelled", "cancelled"]
    with pytest.raises(SteerLabError, match="closed"):
        batcher.submit(request, lambda t: None, lambda r: None)
    with pytest.raises(SteerLabError, match="at least 1"):
        ContinuousBatcher(tiny, max_rows=0)


def test_no_more_than_max_rows_decode_at_once(tiny: LoadedModel) -> None:
    batcher = ContinuousBatcher(tiny, max_rows=2)
    active: set[int] = set()
    most = [0]
    lock = threading.Lock()
    rows: list[Collected] = []
    prompts = [tuple(tokens(tiny, t)) for t in ["Tim", "The dog was", "One day", "Once upon a time", "Lily"]]
    for i, prompt in enumerate(prompts):
        row = Collected()

        def on_token(token: int, i: int = i, row: Collected = row) -> None:
            row.streamed.append(token)
            with lock:
                active.add(i)
                most[0] = max(most[0], len(active))

        def on_done(result: RowResult, i: int = i, row: Collected = row) -> None:
            with lock:
                active.discard(i)
            row.finish(result)

        batcher.submit(RowRequest(prompt, Decoding(max_new_tokens=6, stop_at_eos=False)), on_token, on_done)
        rows.append(row)
    batcher.start()
    try:
        results = [row.wait() for row in rows]
    finally:
        batcher.close()
    assert most[0] == 2
    for prompt, result in zip(prompts, results, strict=True):
        assert list(result.tokens) == alone(tiny, RowRequest(prompt, Decoding(max_new_tokens=6, stop_at_eos=False)))


def test_an_edit_that_raises_ends_only_the_rows_of_its_step(tiny: LoadedModel, batcher: ContinuousBatcher) -> None:
    decoding = Decoding(max_new_tokens=30, stop_at_eos=False)
    prompt = tuple(tokens(tiny, "Once upon a time"))
    first = Collected()
    started = threading.Event()
    first.on_first = started.set
    batcher.submit(RowRequest(prompt, decoding), first.token, first.finish)
    assert started.wait(WAIT)
    # Fails in its own prefill group: the running row is not part of that step.
    bad = submit(batcher, RowRequest(prompt, decoding, edits=(FailingEdit(at_decode=False),))).wait()
    assert bad.finish_reason == "error"
    assert bad.error.startswith("Generation failed inside the model (RuntimeError: boom in the edit)")
    assert bad.error.count(". ") == 0 and bad.error.endswith(".")
    assert list(first.wait().tokens) == alone(tiny, RowRequest(prompt, decoding))
    # Fails at a decode step: that step's rows end, and the scheduler keeps serving.
    broken = submit(batcher, RowRequest(prompt, decoding, edits=(FailingEdit(at_decode=True),))).wait()
    assert broken.finish_reason == "error" and len(broken.tokens) == 1
    after = submit(batcher, RowRequest(prompt, Decoding(max_new_tokens=5))).wait()
    assert after.finish_reason == "length"
    assert list(after.tokens) == alone(tiny, RowRequest(prompt, Decoding(max_new_tokens=5)))


def test_stop_tokens_and_a_broken_row(tiny: LoadedModel, batcher: ContinuousBatcher) -> None:
    prompt = tuple(tokens(tiny, "Once upon a time"))
    plain = alone(tiny, RowRequest(prompt, Decoding(max_new_tokens=12, stop_at_eos=False)))
    stop_at = plain[4]
    stopped = submit(
        batcher, RowRequest(prompt, Decoding(max_new_tokens=12, stop_at_eos=False), stop_token_ids=frozenset({stop_at}))
    ).wait()
    assert stopped.finish_reason == "stop"
    assert list(stopped.tokens) == plain[: plain.index(stop_at)]
    huge = add_edit(tiny, random_vector(tiny), [0], 1e30)
    broken = submit(batcher, RowRequest(prompt, Decoding(max_new_tokens=12), edits=(huge,))).wait()
    assert broken.finish_reason == "non_finite" and broken.tokens == ()


def test_a_prefill_budget_admits_long_bursts_a_group_at_a_time(tiny: LoadedModel) -> None:
    batcher = ContinuousBatcher(tiny, max_rows=8, prefill_tokens=1)  # one row per admission
    order: list[tuple[int, int]] = []
    rows = []
    request = RowRequest(tuple(tokens(tiny, "Once upon a time")), Decoding(max_new_tokens=4, stop_at_eos=False))
    for i in range(3):
        row = Collected()
        row.spy = lambda token, i=i, row=row: order.append((i, len(row.streamed)))
        batcher.submit(request, row.token, row.finish)
        rows.append(row)
    batcher.start()
    try:
        results = [row.wait() for row in rows]
    finally:
        batcher.close()
    assert order[:3] == [(0, 0), (0, 1), (1, 0)]  # the second row joined at the next step
    assert all(list(r.tokens) == alone(tiny, request) for r in results)
