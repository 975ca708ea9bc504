"""OpenAI request bodies read into :class:`ApiRequest`, and the response bodies and stream chunks.

Only what the server honours is accepted: a field it cannot honour (``n`` above 1,
``logprobs``, tools, penalties, vLLM's ``repetition_penalty``) is refused in one sentence
rather than silently ignored, unless it holds its neutral value, compared by type as well
(``true`` and ``1`` ask for log-probabilities; ``false``, ``0`` and ``null`` do not). Fields that
change nothing here (``metadata``, ``store``...) are ignored as OpenAI-compatible servers do.
``steering``, ``ignore_eos`` and vLLM's ``top_k`` are extensions this server honours (the
``openai`` client sends them with ``extra_body``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.conversation import PromptItem, parse_messages
from engine.errors import SteerLabError
from engine.fields import Where, as_str, printable, short
from service.serving.errors import ApiError, bad_request, field_sentence

MAX_STOP_STRINGS = 4
# Fields a client may send that would change the answer in a way this server does not do.
_UNSUPPORTED = {
    "logprobs": "log-probabilities",
    "top_logprobs": "log-probabilities",
    "tools": "tool calls",
    "functions": "function calls",
    "tool_choice": "tool calls",
    "function_call": "function calls",
    "logit_bias": "logit bias",
    "presence_penalty": "presence penalties",
    "frequency_penalty": "frequency penalties",
    "echo": "echoing the prompt",
    "suffix": "suffixes",
    "best_of": "best_of",
    "response_format": "response formats",
    "audio": "audio",
    "modalities": "other modalities",
    "prediction": "predicted outputs",
}
# Values of those fields that mean "not used" (what the openai client sends by default),
# compared by type and value: ``True == 1`` and ``1.0 == 1`` in Python, and neither is neutral.
_NEUTRAL: tuple[Any, ...] = (False, 0, 0.0, "", [], {})
_NEUTRAL_OF: dict[str, tuple[Any, ...]] = {
    "best_of": (1,),  # one candidate: what n=1 already gives
    "tool_choice": ("none", "auto"),  # no tools are sent (tools is refused), so either is no tool call
    "repetition_penalty": (1, 1.0),  # vLLM's extension: 1 leaves the logits as they are
}
# vLLM's sampling extensions: refused unless neutral (top_k is honoured: see Sampling.top_k).
_UNSUPPORTED_EXTENSIONS = {
    "repetition_penalty": "repetition penalties",
    "min_p": "min-p sampling",
    "min_tokens": "a minimum answer length",
    "use_beam_search": "beam search",
    "guided_json": "guided decoding",
    "guided_regex": "guided decoding",
    "guided_choice": "guided decoding",
}
_ROLES = {"developer": "system"}  # the newer OpenAI name of the system role
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None  # None: the server's default
    temperature: float  # 0: greedy
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    top_k: int = 0  # vLLM's extension, honoured: keep the k likeliest tokens (0: no cut)


@dataclass(frozen=True)
class ApiRequest:
    endpoint: str  # "chat" | "completions"
    model: str
    prompt: PromptItem  # a completions prompt's text, or a chat's conversation
    request_text: str  # what is stored of the request: the prompt or messages as JSON
    sampling: Sampling
    stream: bool
    include_usage: bool
    user: str | None
    steering: Any  # None, "off" or the spec's mapping (read by service.serving.targets)


def read_json(body: bytes, limit: int) -> Mapping[str, Any]:
    if len(body) > limit:
        raise ApiError(413, f"The request body is {len(body)} bytes, above this server's limit of {limit}; send less.")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request(
            "The request body nests lists or objects too deeply to read; send a flatter object."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = (
            f" ({exc.msg} at line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        )
        raise bad_request(f"The request body is not valid JSON{detail}; send a JSON object.") from None
    except ValueError:  # Python's own limit on the digits of an integer it converts
        raise bad_request(
            "The request body has a number with too many digits to read; send numbers of a sensible size."
        ) from None
    if not isinstance(data, Mapping):
        raise bad_request(f"The request body is JSON {_kind(data)}, not an object; send a JSON object of fields.")
    _check_unicode(data)
    return data


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON does not have and no field here takes.
    raise bad_request(f"The request body has {name}, which is not a JSON number; send a finite number.")


def _check_unicode(data: Mapping[str, Any]) -> None:
    """Refuse a lone UTF-16 surrogate anywhere in the body: no tokenizer, store or log can encode one."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found = _SURROGATE.search(value)
            if found is not None:
                field = path or "the request body"
                raise bad_request(
                    f"Field '{field}' holds the unpaired surrogate U+{ord(found.group()):04X}, which is not text; "
                    "send valid Unicode (a character beyond U+FFFF as its surrogate pair).",
                    path or None,
                )
        elif isinstance(value, Mapping):
            for key, item in value.items():
                stack.append((path, key))  # a key is text too
                name = printable(short(key, 40))
                stack.append((f"{path}.{name}" if path else name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))


def chat_request(data: Mapping[str, Any]) -> ApiRequest:
    raw = data.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request(
            "Field 'messages' is missing or not a non-empty list; send the conversation as a list of "
            "{role, content} messages ending with a user message.",
            "messages",
        )
    messages = [_message(m, i) for i, m in enumerate(raw)]
    try:
        conversation = parse_messages(messages, Where("request", "messages"))
    except SteerLabError as exc:
        raise bad_request(field_sentence(str(exc)), "messages") from None
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
    return _request("chat", data, conversation, json.dumps(messages, ensure_ascii=False), max_tokens, param)


def completion_request(data: Mapping[str, Any]) -> ApiRequest:
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request(
            "Field 'prompt' must be one non-empty text (a list of prompts or of token ids is not served here); "
            "send one prompt per request.",
            "prompt",
        )
    try:  # the checks a chat message's text gets: no control characters (a store may refuse NUL)
        as_str(prompt, Where("request", "prompt"), allow_empty=True)
    except SteerLabError as exc:
        raise bad_request(field_sentence(str(exc)), "prompt") from None
    return _request(
        "completions", data, prompt, json.dumps(prompt, ensure_ascii=False), data.get("max_tokens"), "max_tokens"
    )


def _request(
    endpoint: str, data: Mapping[str, Any], prompt: PromptItem, text: str, max_tokens: Any, max_param: str
) -> ApiRequest:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        problem = "is missing" if model in (None, "") else f"is {_kind(model)}, not a text"
        raise bad_request(
            f"Field 'model' {problem}; name a variant as EXPERIMENT/VARIANT, a deployment or the model "
            "(GET /v1/models lists them) as a string.",
            "model",
        )
    for name, what in (_UNSUPPORTED | _UNSUPPORTED_EXTENSIONS).items():
        value = data.get(name)
        if not _neutral(name, value):
            raise bad_request(
                f"Field '{name}' is {_shown(value)}, asking for {what}, which this server does not offer; "
                f"leave it out (or send {_neutral_words(name)}).",
                name,
            )
    n = data.get("n", 1)
    if n not in (None, 1):
        raise bad_request(
            f"Field 'n' is {_shown(n)}; this server answers one choice per request, so send n=1 (or several requests).",
            "n",
        )
    stream = _bool(data, "stream")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, Mapping):
            raise bad_request(
                "Field 'stream_options' is not an object; send {\"include_usage\": true} or leave it out.",
                "stream_options",
            )
        include_usage = _bool(options, "include_usage", "stream_options.include_usage")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request(f"Field 'user' is {_kind(user)}, not a text; send the user's id as a string.", "user")
    return ApiRequest(
        endpoint,
        model,
        prompt,
        text,
        Sampling(
            _max_tokens(max_tokens, max_param),
            _number(data, "temperature", 1.0, 0.0, 2.0),
            _top_p(data),
            _seed(data),
            _stops(data.get("stop")),
            _bool(data, "ignore_eos"),
            _top_k(data),
        ),
        stream,
        include_usage,
        user or None,
        data.get("steering"),
    )


def _message(raw: Any, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(raw, Mapping):
        raise bad_request(
            f'Field \'{where}\' is {_kind(raw)}, not a message; send {{"role": ..., "content": ...}}.', where
        )
    role = raw.get("role")
    role = _ROLES.get(role, role) if isinstance(role, str) else role
    content = raw.get("content")
    if isinstance(content, list):  # content parts: only text parts can be served
        texts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad_request(
                    f"Field '{where}.content' has a part that is not text; send text parts only.", f"{where}.content"
                )
            texts.append(part["text"])
        content = "".join(texts)
    return {"role": role, "content": content}  # type and value errors are parse_messages' (one sentence each)


def _max_tokens(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"Field '{param}' is {_shown(value)}; give a whole number of tokens, 1 or more.", param)
    return value


def _number(data: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise bad_request(f"Field '{name}' is {_shown(value)}; give a number from {low:g} to {high:g}.", name)
    return float(value)


def _top_p(data: Mapping[str, Any]) -> float:
    top_p = _number(data, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad_request("Field 'top_p' is 0, which keeps no token; give a number above 0 and at most 1.", "top_p")
    return top_p


def _neutral(name: str, value: Any) -> bool:
    if value is None:
        return True
    return any(type(value) is type(n) and value == n for n in _NEUTRAL_OF.get(name, _NEUTRAL))


def _neutral_words(name: str) -> str:
    values = dict.fromkeys(json.dumps(n) for n in _NEUTRAL_OF.get(name, (False, 0)))
    return " or ".join([*values, "null"])


def _top_k(data: Mapping[str, Any]) -> int:
    value = data.get("top_k")
    if value is None or (type(value) is int and value in (0, -1)):  # vLLM's -1 and 0 both mean no cut
        return 0
    if type(value) is not int or value < 1:
        raise bad_request(
            f"Field 'top_k' is {_shown(value)}; give a whole number of tokens to keep, 1 or more (0 or -1: all).",
            "top_k",
        )
    return value


def _seed(data: Mapping[str, Any]) -> int | None:
    value = data.get("seed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"Field 'seed' is {_shown(value)}; give a whole number.", "seed")
    return value % (2**63 - 1)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise bad_request(
            f"Field 'stop' is {_shown(value)}; give one non-empty text or a list of up to {MAX_STOP_STRINGS}.", "stop"
        )
    return tuple(stops)


def _bool(data: Mapping[str, Any], name: str, param: str | None = None) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"Field '{param or name}' is {_shown(value)}; give true or false.", param or name)
    return value


def _shown(value: Any) -> str:
    return short(printable(json.dumps(value, ensure_ascii=False, default=str)), 60)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a text", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), "null" if value is None else "an object"
    )


# ---- responses -------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    request: ApiRequest, response_id: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The whole (non-streamed) response of a chat or completions request."""
    if request.endpoint == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        kind = "text_completion"
    return {
        "id": response_id,
        "object": kind,
        "created": int(time.time()),
        "model": request.model,
        "choices": [choice],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(
    request: ApiRequest,
    response_id: str,
    created: int,
    text: str | None,
    finish_reason: str | None,
    first: bool = False,
) -> dict[str, Any]:
    """One stream chunk: a piece of text, or (``text`` None) the finishing chunk."""
    if request.endpoint == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        kind = "text_completion"
    return {"id": response_id, "object": kind, "created": created, "model": request.model, "choices": [choice]}


def usage_chunk(
    request: ApiRequest, response_id: str, created: int, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    kind = "chat.completion.chunk" if request.endpoint == "chat" else "text_completion"
    return {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": request.model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def event(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: ``data: {json}`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()
