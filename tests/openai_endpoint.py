"""Real OpenAI-compatible endpoints on 127.0.0.1 for tests: a model served over HTTP, and one that never answers.

:class:`ChatEndpoint` answers ``POST /v1/chat/completions`` in the openai response shape by
running a real local model greedily (through its chat template when it has one), with
per-token ``logprobs`` and ``top_logprobs`` when asked, so the ``openai`` client talks
real HTTP to it. It checks the bearer key (401 otherwise), can refuse ``logprobs`` with a
400 as some servers do, and records every request body. :func:`silent_endpoint` accepts
connections and never answers (a hung server: the client times out).

Both run in a thread of the test process and stop when their ``with`` block ends.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from engine.chat import Message, template_text
from engine.generation import Decoding, generate, left_pad, positions_from_mask
from engine.models import LoadedModel


class ChatEndpoint:
    """``/v1/chat/completions`` served by a local model; ``base_url`` ends in /v1."""

    def __init__(self, model: LoadedModel, api_key: str = "test-key", logprobs: bool = True) -> None:
        self.model, self.api_key, self.logprobs = model, api_key, logprobs
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = endpoint.answer(self.path, self.headers.get("Authorization", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the requests list
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ChatEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def answer(self, path: str, authorization: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of a request, as an OpenAI-compatible server answers it."""
        self.requests.append(body)
        if path.rstrip("/") != "/v1/chat/completions":
            return 404, _error(f"no route {path}", "not_found")
        if authorization != f"Bearer {self.api_key}":
            return 401, _error("Incorrect API key provided.", "invalid_api_key")
        if body.get("logprobs") and not self.logprobs:
            return 400, _error("logprobs are not supported by this server.", "invalid_request_error")
        messages = [Message(m["role"], m["content"]) for m in body["messages"]]
        return 200, self._completion(body, messages)

    def _completion(self, body: dict[str, Any], messages: list[Message]) -> dict[str, Any]:
        model, tokenizer = self.model, self.model.tokenizer
        if model.has_chat_template:
            prompt = list(tokenizer(template_text(tokenizer, messages, True), add_special_tokens=False).input_ids)
        else:
            prompt = list(tokenizer("\n\n".join(m.content for m in messages) + "\n\nAnswer:").input_ids)
        limit = int(body.get("max_tokens") or 16)
        tokens = generate(model, [prompt], Decoding(max_new_tokens=limit))[0]
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": tokenizer.decode(tokens, skip_special_tokens=True)},
            "finish_reason": "length" if len(tokens) >= limit else "stop",
            "logprobs": None,
        }
        if body.get("logprobs") and tokens:
            choice["logprobs"] = {"content": self._logprobs(prompt, tokens, int(body.get("top_logprobs") or 0))}
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt) + len(tokens),
            },
        }

    def _logprobs(self, prompt: list[int], tokens: list[int], top: int) -> list[dict[str, Any]]:
        """Each generated token's log-probability and its ``top`` likeliest alternatives (teacher-forced)."""
        model = self.model
        ids, mask = left_pad(model, [prompt + tokens])
        with model.lock, torch.no_grad():
            logits = model.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        log_probs = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        out = []
        for step, token in enumerate(tokens):
            row = log_probs[step]
            best = torch.topk(row, top).indices.tolist() if top else []
            out.append(
                {
                    **_token(model, token, float(row[token])),
                    "top_logprobs": [_token(model, t, float(row[t])) for t in best],
                }
            )
        return out


def _token(model: LoadedModel, token: int, logprob: float) -> dict[str, Any]:
    text = model.tokenizer.decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """A base URL whose server accepts connections and never answers; yields it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # keep it open, say nothing
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def closed_port_url() -> str:
    """A base URL on a port where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
