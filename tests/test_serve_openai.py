"""``steerlab serve`` through the official openai client: variants, plain model, request specs, deployments.

The texts are compared with what ``steerlab run`` stored for the same variant and prompt
(greedy, the same number of tokens), and with :func:`engine.generation.generate` for the
plain model, so the server runs exactly the variant's framing and edits.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import needs_models
from tests.serving import ADMIN_KEY, EXPERIMENT, NEW_TOKENS, Served, stored_responses

pytestmark = needs_models


def complete(client: Any, model: str, prompt: str, **extra: Any) -> Any:
    return client.completions.create(model=model, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, **extra)


def streamed_text(stream: Any, chat: bool) -> tuple[str, list[Any]]:
    chunks = list(stream)
    pieces = [(c.choices[0].delta.content or "") if chat else c.choices[0].text for c in chunks if c.choices]
    return "".join(pieces), chunks


def test_models_lists_the_plain_model_and_every_servable_variant(served: Served, tiny: Any) -> None:
    names = {m.id for m in served.client().models.list()}
    assert tiny.model_id in names
    assert {f"{EXPERIMENT}/baseline", f"{EXPERIMENT}/sad_x2", f"{EXPERIMENT}/sad_layer1_x2 (random)"} <= names


@pytest.mark.parametrize("variant", ["sad_x2", "prompt_sad"])
def test_a_variant_answers_what_steerlab_run_stored_streamed_or_not(served: Served, variant: str) -> None:
    client = served.client()
    model = f"{EXPERIMENT}/{variant}"
    for index, prompt in enumerate(served.prompts):
        whole = complete(client, model, prompt)
        assert whole.choices[0].text == served.run_texts[(variant, index)]
        assert whole.usage.completion_tokens <= NEW_TOKENS and whole.usage.prompt_tokens > 0
        text, chunks = streamed_text(
            complete(client, model, prompt, stream=True, stream_options={"include_usage": True}), chat=False
        )
        assert text == whole.choices[0].text
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert all(c.id == chunks[0].id for c in chunks)
    # The two variants answer differently (one steers, the other prompts).
    assert served.run_texts[("sad_x2", 0)] != served.run_texts[("prompt_sad", 0)]


@pytest.mark.parametrize("variant", ["sad_x1", "prompt_sad"])
def test_chat_streamed_and_not_agree_and_are_stored(served: Served, variant: str) -> None:
    client = served.client()
    messages = [{"role": "user", "content": "Tell me about a sad dog."}]
    whole = client.chat.completions.create(
        model=f"{EXPERIMENT}/{variant}", messages=messages, max_tokens=8, temperature=0, user="alice"
    )
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content
    text, chunks = streamed_text(
        client.chat.completions.create(
            model=f"{EXPERIMENT}/{variant}", messages=messages, max_tokens=8, temperature=0, stream=True
        ),
        chat=True,
    )
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    stored = stored_responses(served.store)
    row = stored[whole.id]
    assert row.response_text == whole.choices[0].message.content and row.endpoint == "chat"
    assert row.completion_tokens == whole.usage.completion_tokens and row.user_key and row.user_key != "alice"
    assert stored[chunks[0].id].response_text == text  # the stream's response too, before its [DONE]


def test_steering_off_is_the_plain_model_exactly(served: Served, tiny: Any) -> None:
    from engine.generation import Decoding, generate

    prompt = served.prompts[0]
    plain = generate(tiny, [list(tiny.tokenizer(prompt).input_ids)], Decoding(max_new_tokens=NEW_TOKENS))[0]
    expected = tiny.tokenizer.decode(plain, skip_special_tokens=True)
    for model in (f"{EXPERIMENT}/sad_x2", f"{EXPERIMENT}/prompt_sad", tiny.model_id):
        answer = complete(served.client(), model, prompt, extra_body={"steering": "off"})
        assert answer.choices[0].text == expected
    assert expected != served.run_texts[("sad_x2", 0)]
    assert stored_responses(served.store)[answer.id].steering_json == "off"


def test_a_request_spec_steers_like_the_variant_it_spells_out(served: Served, tiny: Any) -> None:
    spec = {
        "experiment": EXPERIMENT,
        "edits": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 2.0, "scope": "all"}],
    }
    answer = complete(served.client(), tiny.model_id, served.prompts[1], extra_body={"steering": spec})
    assert answer.choices[0].text == served.run_texts[("sad_x2", 1)]
    row = stored_responses(served.store)[answer.id]
    assert row.served_variant_id is None and '"coefficient": 2.0' in row.steering_json


def test_stop_strings_cut_the_answer_streamed_or_not(served: Served) -> None:
    full = served.run_texts[("baseline", 0)]
    cut_at = full.split()[2]
    client = served.client()
    whole = complete(client, f"{EXPERIMENT}/baseline", served.prompts[0], stop=[cut_at])
    assert whole.choices[0].text == full[: full.index(cut_at)]
    assert whole.choices[0].finish_reason == "stop"
    text, _ = streamed_text(
        complete(client, f"{EXPERIMENT}/baseline", served.prompts[0], stop=cut_at, stream=True), chat=False
    )
    assert text == whole.choices[0].text


def test_kill_switch_by_endpoint_and_by_store(served: Served) -> None:
    from service.access import LOCAL
    from service.deployments import create_deployment, resume_variant, stop_variant

    create_deployment(
        served.store, LOCAL, "mood-live", EXPERIMENT, {"sad_x2": 1.0, "baseline": 0.0}, baseline="baseline"
    )
    wait_for(lambda: served.server.context.board.get("mood-live") is not None)  # the server's next poll
    client, prompt = served.client(), served.prompts[0]
    steered, baseline = served.run_texts[("sad_x2", 0)], served.run_texts[("baseline", 0)]
    assert steered != baseline
    wait_for(lambda: complete(client, "mood-live", prompt).choices[0].text == steered)
    assert (
        "x-steerlab-variant"
        not in client.completions.with_raw_response.create(model="mood-live", prompt=prompt, max_tokens=2).headers
    )  # blind by default

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = f"{served.base_url}/deployments/mood-live/variants/sad_x2/stop"
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    switched = httpx.post(url, headers=admin)
    assert (
        switched.status_code == 200 and {a["variant"]: a["stopped"] for a in switched.json()["arms"]}["sad_x2"] is True
    )
    after = complete(client, "mood-live", prompt, user="bob")  # the very next request
    assert after.choices[0].text == baseline
    row = stored_responses(served.store)[after.id]
    assert row.response_text == baseline and row.deployment_id is not None

    resume_variant(served.store, LOCAL, "mood-live", "sad_x2")
    wait_for(lambda: complete(client, "mood-live", prompt).choices[0].text == steered)
    stop_variant(served.store, LOCAL, "mood-live", "sad_x2")  # from the store: the CLI's or dashboard's switch
    wait_for(lambda: complete(client, "mood-live", prompt).choices[0].text == baseline)


def test_feedback_and_preferences_on_served_responses(served: Served) -> None:
    from service.access import LOCAL
    from service.deployments import create_deployment

    create_deployment(
        served.store, LOCAL, "mood-feedback", EXPERIMENT, {"sad_x1": 1.0, "happy_x2": 1.0, "baseline": 1.0}
    )
    wait_for(lambda: served.server.context.board.get("mood-feedback") is not None)  # the server's next poll
    client = served.client()
    first = complete(client, "mood-feedback", served.prompts[0], user="u1")
    second = complete(client, "mood-feedback", served.prompts[1], user="u1")
    headers = {"Authorization": "Bearer serve-test-key"}
    good = httpx.post(
        f"{served.base_url}/feedback", json={"response_id": first.id, "thumbs": "up", "user": "u1"}, headers=headers
    )
    assert good.status_code == 200, good.text
    pair = {"preferred": first.id, "other": second.id, "user": "u1"}
    preferred = httpx.post(f"{served.base_url}/preferences", json=pair, headers=headers)
    assert preferred.status_code == 200, preferred.text
    unknown = httpx.post(
        f"{served.base_url}/feedback", json={"response_id": "chatcmpl-nope", "thumbs": "up"}, headers=headers
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["message"].count(". ") == 0


def test_a_client_that_leaves_cancels_its_row_and_its_answer_is_stored_as_cancelled(served: Served) -> None:
    import json

    from service.access import LOCAL
    from service.deployments import create_deployment
    from service.live_comparison import live_comparison

    create_deployment(
        served.store, LOCAL, "mood-leave", EXPERIMENT, {"sad_x2": 1.0, "baseline": 0.0}, baseline="baseline"
    )
    wait_for(lambda: served.server.context.board.get("mood-leave") is not None)  # the server's next poll
    health = f"{served.base_url.removesuffix('/v1')}/health"
    batcher = served.server.context.batcher
    before = batcher.stats()["generated_tokens"]
    body = {
        "model": "mood-leave",
        "prompt": served.prompts[0],
        "max_tokens": 500,
        "ignore_eos": True,  # it would write all 500 tokens if nobody stopped it
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{served.base_url}/completions", json=body, headers={"Authorization": "Bearer serve-test-key"}
    ) as stream:
        assert stream.status_code == 200
        first = json.loads(next(stream.iter_lines()).removeprefix("data: "))  # the row runs; now the client leaves
    wait_for(lambda: httpx.get(health).json()["running"] == 0)
    assert batcher.stats()["generated_tokens"] - before < 500
    # Abandonment is an A/B signal: the answer so far is stored, as "cancelled", under the deployment.
    wait_for(lambda: first["id"] in stored_responses(served.store))
    row = stored_responses(served.store)[first["id"]]
    assert row.finish_reason == "cancelled" and row.deployment_id is not None
    assert row.response_text.startswith(first["choices"][0]["text"]) and 1 <= row.completion_tokens < 500
    live = live_comparison(served.store, "mood-leave")
    assert {v.variant: v.served for v in live.variants}["sad_x2"] == 1 and live.unattributed == 0


def test_top_k_is_honoured(served: Served) -> None:
    # Sampling from the single likeliest token is greedy decoding, whatever the temperature and seed.
    for seed in (1, 2):
        answer = served.client().completions.create(
            model=f"{EXPERIMENT}/baseline",
            prompt=served.prompts[0],
            max_tokens=NEW_TOKENS,
            temperature=1.5,
            seed=seed,
            extra_body={"top_k": 1},
        )
        assert answer.choices[0].text == served.run_texts[("baseline", 0)]


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold within the deadline"
        time.sleep(0.01)  # a poll, not a wait for an assumed duration


def test_streamed_text_waits_for_whole_characters_and_cuts_at_a_stop_spanning_tokens() -> None:
    from service.serving.text_stream import TextStream

    def decode(tokens: Any) -> str:  # one token per byte, as byte-fallback tokenizers write rare characters
        return bytes(tokens).decode("utf-8", errors="replace")

    text = "Café ☃ is cold.\nTHE END and more"
    stream = TextStream(decode, ["\nTHE END"])
    pieces = [stream.add(b) for b in text.encode()]
    pieces.append(stream.finish())
    assert "\ufffd" not in "".join(pieces) and all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == stream.text == "Café ☃ is cold."
    assert stream.stopped and stream.token_count == len("Café ☃ is cold.\nTHE END".encode())
    plain = TextStream(decode)
    assert "".join([plain.add(b) for b in text.encode()] + [plain.finish()]) == text
