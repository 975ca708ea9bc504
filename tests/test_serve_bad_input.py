"""Bad requests to ``steerlab serve`` get the OpenAI error shape, one sentence and the right status;
the server keeps serving (a good request right after each one is answered)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import needs_models
from tests.serving import ADMIN_KEY, API_KEY, EXPERIMENT, Served

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
        "steering.edits[0].coefficient is 9, beyond this server's limit of 4; use a coefficient between",
    ),
    (
        "a vector the experiment lacks",
        {"extra_body": {"steering": {"edits": [{**SAD, "vector": "angry"}]}}},
        openai.BadRequestError,
        "restart the server to serve vectors added since it started",
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
    # True == 1 and 1.0 == 1 in Python: only false, 0 and null are neutral.
    ("log-probabilities asked with true", {"logprobs": True}, openai.BadRequestError, "Field 'logprobs' is true"),
    ("log-probabilities asked with 1", {"logprobs": 1}, openai.BadRequestError, "Field 'logprobs' is 1"),
    ("echo asked with true", {"echo": True}, openai.BadRequestError, "echoing the prompt"),
    ("a presence penalty of 1.0", {"presence_penalty": 1.0}, openai.BadRequestError, "presence penalties"),
    ("a frequency penalty of 1", {"frequency_penalty": 1}, openai.BadRequestError, "frequency penalties"),
    ("top log-probabilities", {"extra_body": {"top_logprobs": 1}}, openai.BadRequestError, "'top_logprobs' is 1"),
    (
        "a repetition penalty",
        {"extra_body": {"repetition_penalty": 1.2}},
        openai.BadRequestError,
        "send 1 or 1.0 or null",
    ),
    ("a top_k below 1", {"extra_body": {"top_k": -5}}, openai.BadRequestError, "Field 'top_k' is -5"),
    (
        "steering on a deployment",
        {"model": "mood-refusals", "extra_body": {"steering": "off"}},
        openai.BadRequestError,
        "is a deployment, which decides the steering itself",
    ),
    ("a wrong API key", {"key": "guess"}, openai.AuthenticationError, "API key is missing or wrong"),
]


@pytest.fixture(scope="module")
def deployment(served: Served) -> str:
    """A deployment of the served experiment, once the server has read it."""
    from service.access import LOCAL
    from service.deployments import create_deployment

    create_deployment(
        served.store, LOCAL, "mood-refusals", EXPERIMENT, {"sad_x2": 1.0, "baseline": 0.0}, baseline="baseline"
    )
    deadline = time.monotonic() + 10
    while served.server.context.board.get("mood-refusals") is None:  # the server's next poll
        assert time.monotonic() < deadline, "the server did not see the new deployment"
        time.sleep(0.01)
    return "mood-refusals"


@pytest.mark.parametrize(("fields", "error", "words"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_a_bad_completion_request_is_refused_in_one_sentence(
    served: Served,
    tiny: Any,
    deployment: str,
    fields: dict[str, Any],
    error: type[openai.APIStatusError],
    words: str,
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


def test_neutral_values_of_refused_fields_pass(served: Served) -> None:
    answer = served.client().completions.create(
        model=f"{EXPERIMENT}/baseline",
        prompt=served.prompts[0],
        max_tokens=2,
        temperature=0,
        logprobs=0,
        echo=False,
        presence_penalty=0.0,
        frequency_penalty=0,
        extra_body={"top_logprobs": None, "repetition_penalty": 1.0, "best_of": 1},
    )
    assert answer.choices[0].text


DEEP = b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
RAW_REQUESTS: list[tuple[str, str, bytes, int, str]] = [
    # A lone surrogate would reach the tokenizer (a TypeError) and the store: refused on both paths.
    ("POST", "completions", b'{"model": "m", "prompt": "a\\ud800b"}', 400, "Field 'prompt' holds the unpaired"),
    (
        "POST",
        "chat/completions",
        b'{"model": "m", "messages": [{"role": "user", "content": "a\\udfffb"}]}',
        400,
        "Field 'messages[0].content' holds the unpaired surrogate U+DFFF",
    ),
    ("POST", "completions", b'{"model": "m", "prompt": "a", "user": {"\\ud800": 1}}', 400, "unpaired surrogate"),
    ("POST", "completions", b'{"model": "m", "prompt": "a\\u0000"}', 400, "prompt holds the control character U+0000"),
    ("POST", "completions", b'{"model": "m", "prompt": "a", "temperature": NaN}', 400, "has NaN, which is not"),
    ("POST", "completions", DEEP, 400, "nests lists or objects too deeply"),
    ("POST", "completions", b'{"model": "m", "prompt": "a", "seed": ' + b"9" * 5000 + b"}", 400, "too many digits"),
    ("POST", "completions", b'{"model": 5, "prompt": "a"}', 400, "Field 'model' is a number, not a text"),
    ("POST", "completions", b'{"prompt": "a"}', 400, "Field 'model' is missing"),
    ("GET", "completions", b"", 405, "/v1/completions does not take GET requests; use POST."),
    ("GET", "chat/completions", b"", 405, "use POST."),
    ("POST", "models", b"", 405, "use GET."),
]


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "words"),
    RAW_REQUESTS,
    ids=[
        "surrogate",
        "chat surrogate",
        "surrogate key",
        "NUL",
        "NaN",
        "deep",
        "long number",
        "model 5",
        "no model",
        "GET",
        "GET chat",
        "POST",
    ],
)
def test_a_raw_bad_request_gets_the_openai_error_shape(
    served: Served, method: str, path: str, payload: bytes, status: int, words: str
) -> None:
    answer = httpx.request(
        method,
        f"{served.base_url}/{path}",
        content=payload,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"], error
    one_sentence(error["message"])
    still_serving(served)


def test_the_kill_switch_of_an_unknown_deployment_or_arm_is_not_found(served: Served, deployment: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for url, words in (
        ("deployments/no-such/variants/sad_x2/stop", "no-such"),
        (f"deployments/{deployment}/variants/happy_x2/stop", "has no arm 'happy_x2' (arms: "),
    ):
        answer = httpx.post(f"{served.base_url}/{url}", headers=admin)
        assert answer.status_code == 404, answer.text
        assert words in answer.json()["error"]["message"]
        one_sentence(answer.json()["error"]["message"])


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
