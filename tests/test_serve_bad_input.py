"""Bad requests to ``steerlab serve`` get the OpenAI error shape, one sentence and the right status;
the server keeps serving (a good request right after each one is answered)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import needs_models
from tests.serving import API_KEY, EXPERIMENT, Served

pytestmark = needs_models

SAD = {"method": "add", "vector": "sad", "layers": [0], "coefficient": 2.0}


def one_sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message and ". " not in message, message
    assert "Traceback" not in message


def still_serving(served: Served) -> None:
    answer = served.client().completions.create(
        model=f"{EXPERIMENT}/baseline", prompt=served.prompts[0], max_tokens=2, temperature=0
    )
    assert answer.choices[0].text


BAD_REQUESTS: list[tuple[str, dict[str, Any], type[openai.APIStatusError], str]] = [
    ("unknown variant", {"model": f"{EXPERIMENT}/cheerful"}, openai.NotFoundError, "has no variant 'cheerful'"),
    ("unknown deployment", {"model": "no-such-deployment"}, openai.NotFoundError, "is not served here"),
    (
        "coefficient beyond the limit",
        {"extra_body": {"steering": {"edits": [{**SAD, "coefficient": 9}]}}},
        openai.BadRequestError,
        "edits[0].coefficient: is 9, beyond this server's limit of 4",
    ),
    (
        "a vector the experiment lacks",
        {"extra_body": {"steering": {"edits": [{**SAD, "vector": "angry"}]}}},
        openai.BadRequestError,
        "not a vector of experiment",
    ),
    (
        "a method requests may not use",
        {"extra_body": {"steering": {"edits": [{"method": "ablate", "vector": "sad", "layers": [0]}]}}},
        openai.BadRequestError,
        "does not take in a request",
    ),
    (
        "a layer the model lacks",
        {"extra_body": {"steering": {"edits": [{**SAD, "layers": [7]}]}}},
        openai.BadRequestError,
        "layer 7 is out of range",
    ),
    (
        "a spec for an experiment not served",
        {"extra_body": {"steering": {"experiment": "other", "edits": [SAD]}}},
        openai.BadRequestError,
        "which this server does not serve",
    ),
    ("steering of the wrong type", {"extra_body": {"steering": 3}}, openai.BadRequestError, "Field 'steering'"),
    (
        "a prompt longer than the context",
        {"prompt": "Once upon a time there was a dog. " * 80},
        openai.BadRequestError,
        "more than the model's context of 512 tokens",
    ),
    ("too many tokens", {"max_tokens": 100_000}, openai.BadRequestError, "above this server's limit"),
    ("several choices", {"n": 2}, openai.BadRequestError, "one choice per request"),
    ("a temperature out of range", {"temperature": 7}, openai.BadRequestError, "Field 'temperature' is 7"),
    ("log-probabilities", {"logprobs": 2}, openai.BadRequestError, "log-probabilities"),
    ("a wrong API key", {"key": "guess"}, openai.AuthenticationError, "API key is missing or wrong"),
]


@pytest.mark.parametrize(("fields", "error", "words"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_a_bad_completion_request_is_refused_in_one_sentence(
    served: Served, tiny: Any, fields: dict[str, Any], error: type[openai.APIStatusError], words: str
) -> None:
    request: dict[str, Any] = {"model": tiny.model_id, "prompt": served.prompts[0], "max_tokens": 2, "temperature": 0}
    request.update(fields)
    client = served.client(request.pop("key", API_KEY))
    with pytest.raises(error) as refused:
        client.completions.create(**request)
    body = refused.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}, body
    assert words in body["message"], body["message"]
    one_sentence(body["message"])
    still_serving(served)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b'{"model": "x", "messages": [', "not valid JSON"),
        (b'["a list"]', "not an object"),
        (b'{"model": "m"}', "Field 'messages' is missing"),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "hi"}]}', "not a known role"),
        (b'{"model": "m", "messages": [{"role": "assistant", "content": "hi"}]}', "ends with the user message"),
    ],
)
def test_a_malformed_chat_body_is_refused_in_one_sentence(served: Served, payload: bytes, words: str) -> None:
    answer = httpx.post(
        f"{served.base_url}/chat/completions",
        content=payload,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"], error
    one_sentence(error["message"])
    still_serving(served)


def test_no_api_key_an_unknown_route_or_an_admin_call_without_its_key_is_refused(served: Served) -> None:
    keyless = httpx.post(f"{served.base_url}/completions", json={"model": f"{EXPERIMENT}/baseline", "prompt": "Hi"})
    assert keyless.status_code == 401 and keyless.json()["error"]["type"] == "authentication_error"
    one_sentence(keyless.json()["error"]["message"])
    missing = httpx.get(f"{served.base_url}/engines", headers={"Authorization": f"Bearer {API_KEY}"})
    assert missing.status_code == 404 and "No such endpoint" in missing.json()["error"]["message"]
    admin = httpx.post(
        f"{served.base_url}/deployments/x/variants/y/stop", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert admin.status_code == 401
    one_sentence(admin.json()["error"]["message"])
    still_serving(served)


def test_a_server_open_beyond_loopback_needs_an_api_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main

    monkeypatch.delenv("STEERLAB_API_KEY", raising=False)
    assert main(["serve", "--experiment", EXPERIMENT, "--host", "0.0.0.0"]) == 2
    message = capsys.readouterr().err.strip().removeprefix("error: ")
    assert "needs an API key" in message
    one_sentence(message)
    assert main(["serve", "--experiment", EXPERIMENT, "--api-key-env", "STEERLAB_NO_SUCH_KEY"]) == 2
    message = capsys.readouterr().err.strip().removeprefix("error: ")
    assert "STEERLAB_NO_SUCH_KEY" in message
    one_sentence(message)
