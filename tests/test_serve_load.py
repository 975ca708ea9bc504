"""32 concurrent clients x 20 requests: every response stored exactly once, memory flat, cache emptied."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import httpx
import psutil

from tests.conftest import needs_models
from tests.serving import API_KEY, EXPERIMENT, Served, stored_responses

pytestmark = needs_models

CLIENTS, REQUESTS = 32, 20
# The server runs in this process; a leak of one row's state per request (a cache, a
# prompt's tokens, a queue) over 640 requests would show well above this.
RSS_TOLERANCE_BYTES = 48 * 2**20


async def _client_requests(served: Served, client_index: int, rounds: int, plain_id: str) -> list[tuple[str, str]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    spec = {
        "edits": [
            {"method": "add", "vector": "sad", "layers": [client_index % 2], "coefficient": 1.0 + client_index % 3}
        ]
    }
    out = []
    try:
        for i in range(rounds):
            prompt = served.prompts[(client_index + i) % len(served.prompts)]
            kind = (client_index + i) % 4
            if kind == 0:  # a variant, streamed
                stream = await client.completions.create(
                    model=f"{EXPERIMENT}/sad_x1", prompt=prompt, max_tokens=4, temperature=0, stream=True
                )
                chunks = [c async for c in stream]
                out.append((chunks[0].id, "".join(c.choices[0].text for c in chunks if c.choices)))
            elif kind == 1:  # a request's own spec, sampled
                answer = await client.completions.create(
                    model=EXPERIMENT, prompt=prompt, max_tokens=4, seed=i, extra_body={"steering": spec}
                )
                out.append((answer.id, answer.choices[0].text))
            elif kind == 2:  # chat with a prompting variant
                chat = await client.chat.completions.create(
                    model=f"{EXPERIMENT}/prompt_sad", messages=[{"role": "user", "content": prompt}], max_tokens=4
                )
                out.append((chat.id, chat.choices[0].message.content or ""))
            else:  # the plain model
                answer = await client.completions.create(model=plain_id, prompt=prompt, max_tokens=4, temperature=0)
                out.append((answer.id, answer.choices[0].text))
    finally:
        await client.close()
    return out


async def _round(served: Served, rounds: int, plain_id: str) -> list[tuple[str, str]]:
    results = await asyncio.gather(*(_client_requests(served, c, rounds, plain_id) for c in range(CLIENTS)))
    return [pair for client in results for pair in client]


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def test_concurrent_clients_lose_nothing_store_nothing_twice_and_memory_stays_flat(served: Served, tiny: Any) -> None:
    before_ids = set(stored_responses(served.store))
    warm = asyncio.run(_round(served, 2, tiny.model_id))  # allocator pools and caches reach their working size
    rss_warm = _rss()
    answered = asyncio.run(_round(served, REQUESTS, tiny.model_id))
    rss_after = _rss()

    assert len(answered) == CLIENTS * REQUESTS
    ids = [response_id for response_id, _ in answered]
    assert len(set(ids)) == len(ids)
    stored = stored_responses(served.store)
    new = set(stored) - before_ids
    assert new == set(ids) | {response_id for response_id, _ in warm}  # each stored once: ids are unique keys
    assert all(stored[r].response_text == text for r, text in answered)
    assert all(stored[r].completion_tokens <= 4 and stored[r].latency_seconds > 0 for r in ids)

    health = httpx.get(f"{served.base_url.removesuffix('/v1')}/health").json()
    assert health["running"] == 0 and health["waiting"] == 0 and health["cache_tokens"] == 0
    print(f"RSS after warm-up {rss_warm / 2**20:.0f} MiB, after {len(answered)} requests {rss_after / 2**20:.0f} MiB")
    assert rss_after - rss_warm < RSS_TOLERANCE_BYTES, f"RSS grew by {(rss_after - rss_warm) / 2**20:.1f} MiB"


def test_the_response_log_stores_everything_queued_before_it_closes(served: Served) -> None:
    from datetime import UTC, datetime

    from service.deployments import ServedResponse
    from service.serving.response_log import ResponseLog

    log = ResponseLog(served.store, max_batch=16)
    log.start()
    outcomes: list[BaseException | None] = []
    ids = [f"cmpl-drain-{i}" for i in range(100)]
    for response_id in ids:
        row = ServedResponse(
            response_id, EXPERIMENT, None, "baseline", "baseline", "", "", "completions",
            '"Hi"', "there", 1, 1, 0.01, 0.02, "length", datetime.now(UTC),
        )  # fmt: skip
        log.submit(row, outcomes.append)
    log.submit(row, outcomes.append)  # the same id again: stored once
    log.close()  # returns once the queue is drained
    assert outcomes == [None] * 101
    stored = stored_responses(served.store)
    assert set(ids) <= set(stored) and log.commits < 101  # grouped commits
