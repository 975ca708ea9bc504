"""The HTTP side of ``steerlab serve``: Starlette routes in the OpenAI API's shape.

``/v1/chat/completions`` and ``/v1/completions`` (streamed as server-sent events when asked),
``/v1/models``, ``/v1/feedback`` and ``/v1/preferences``; with the admin key, a deployment's
state and its kill switch (``/v1/deployments/{name}/variants/{variant}/stop|resume``);
``/health``. Every refusal is the OpenAI error shape with one sentence.

A response is stored (:mod:`.response_log`) before its last byte is sent: the whole body of
a plain response, the finishing chunk of a stream; so a client that has a response id can
always give feedback on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.errors import SteerLabError
from engine.fields import printable, short
from service.access import Identity
from service.deployments import (
    Deployment,
    ServedResponse,
    get_deployment,
    record_feedback,
    record_preference,
    resume_variant,
    stop_variant,
    user_key,
)
from service.serving.context import ServingContext
from service.serving.errors import ApiError, bad_request, field_sentence
from service.serving.protocol import (
    ApiRequest,
    chat_request,
    chunk_body,
    completion_body,
    completion_request,
    event,
    read_json,
    usage_chunk,
)
from service.serving.rows import Outcome, RowRun, answer
from service.serving.targets import Target

log = logging.getLogger(__name__)

VARIANT_HEADER = "x-steerlab-variant"
ADMIN = Identity("steerlab serve admin key", signed_in=False)
_Handler = Callable[[Request], Awaitable[Response]]


def build_app(context: ServingContext) -> Starlette:
    """The app around a :class:`ServingContext`; its lifespan starts and closes the context."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(context.start)
        poll = asyncio.create_task(_poll_deployments(context))
        try:
            yield
        finally:
            poll.cancel()
            await asyncio.to_thread(context.close)

    api = _Routes(context)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/feedback", api.feedback, methods=["POST"]),
        Route("/v1/preferences", api.preference, methods=["POST"]),
        Route("/v1/deployments/{name}", api.deployment, methods=["GET"]),
        Route("/v1/deployments/{name}/variants/{variant}/{action}", api.switch, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            SteerLabError: _steerlab_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )


async def _poll_deployments(context: ServingContext) -> None:
    while True:
        await asyncio.sleep(context.options.poll_seconds)
        try:
            await asyncio.to_thread(context.board.refresh)
        except Exception:  # keep polling: the board logs and keeps what it read last
            log.exception("polling the deployments failed")


class _Routes:
    def __init__(self, context: ServingContext) -> None:
        self.context = context
        self.options = context.options

    # ---- access

    def _check_key(self, request: Request) -> None:
        key = self.options.api_key
        if key is not None and not _bearer_matches(request, key):
            raise ApiError(
                401,
                "The API key is missing or wrong; send it as 'Authorization: Bearer KEY' (the openai client's api_key).",
                code="invalid_api_key",
            )

    def _check_admin(self, request: Request) -> None:
        key = self.options.admin_key
        if key is None:
            raise ApiError(
                403,
                "The admin endpoints are off on this server; start it with an admin key in $STEERLAB_ADMIN_KEY "
                "(or use `steerlab deploy` on the store).",
                code="admin_off",
            )
        if not _bearer_matches(request, key):
            raise ApiError(
                401,
                "The admin key is missing or wrong; send it as 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )

    # ---- routes

    async def health(self, request: Request) -> Response:
        stats = self.context.batcher.stats()
        return JSONResponse(
            {
                "status": "ok",
                "model": self.context.catalog.model_id,
                "running": int(stats["running"]),
                "waiting": int(stats["waiting"]),
                "cache_tokens": int(stats["cache_tokens"]),
                "responses_stored": self.context.responses.stored,
            }
        )

    async def models(self, request: Request) -> Response:
        self._check_key(request)
        created = int(time.time())
        names = self.context.catalog.model_names() + [d.name for d in self.context.board.live()]
        data = [{"id": n, "object": "model", "created": created, "owned_by": "steerlab"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat_request, "chatcmpl-")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, completion_request, "cmpl-")

    async def feedback(self, request: Request) -> Response:
        self._check_key(request)
        data = await _read_body(request, self.options.max_body_bytes)
        response_id = _text(data, "response_id", required=True)
        thumbs = _text(data, "thumbs")
        score = data.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise bad_request("Field 'score' is not a number; give a number from 0 to 1, or leave it out.", "score")
        user = _text(data, "user")
        comment = _text(data, "comment") or ""
        await _store_call(
            lambda: record_feedback(
                self.context.store,
                str(response_id),
                thumbs=thumbs,
                score=None if score is None else float(score),
                user=user,
                comment=comment,
            )
        )
        return JSONResponse({"stored": True, "response_id": response_id})

    async def preference(self, request: Request) -> Response:
        self._check_key(request)
        data = await _read_body(request, self.options.max_body_bytes)
        preferred = str(_text(data, "preferred", required=True))
        other = str(_text(data, "other", required=True))
        user = _text(data, "user")
        tie = data.get("tie", False)
        if not isinstance(tie, bool):
            raise bad_request("Field 'tie' is not true or false; give true for a tie, or leave it out.", "tie")
        await _store_call(lambda: record_preference(self.context.store, preferred, other, user, tie))
        return JSONResponse({"stored": True, "preferred": preferred, "other": other, "tie": tie})

    async def deployment(self, request: Request) -> Response:
        self._check_admin(request)
        name = request.path_params["name"]
        found = await _store_call(lambda: get_deployment(self.context.store, name), status=404)
        return JSONResponse(_deployment_json(found))

    async def switch(self, request: Request) -> Response:
        self._check_admin(request)
        name, variant, action = (request.path_params[k] for k in ("name", "variant", "action"))
        actions = {"stop": stop_variant, "resume": resume_variant}
        if action not in actions:
            raise ApiError(
                404,
                f"No action '{short(printable(action), 40)}' for a deployment's variant; use stop or resume.",
                code="not_found",
            )
        store = self.context.store
        found: Deployment = await _store_call(lambda: get_deployment(store, name), status=404)
        arms = [a.variant for a in found.arms]
        if variant not in arms:
            raise ApiError(
                404,
                f"Deployment '{found.name}' has no arm '{short(printable(variant), 80)}' (arms: {', '.join(arms)}); "
                "name one of those.",
                code="not_found",
            )
        changed = await _store_call(lambda: actions[action](store, ADMIN, name, variant))
        # This replica applies it at once; the others see the new version at their next poll.
        await asyncio.to_thread(self.context.board.refresh, True)
        return JSONResponse(_deployment_json(changed))

    # ---- generation

    async def _generate(
        self, request: Request, parse: Callable[[Mapping[str, Any]], ApiRequest], prefix: str
    ) -> Response:
        received = time.perf_counter()
        self._check_key(request)
        asked = parse(await _read_body(request, self.options.max_body_bytes))
        context = self.context
        target = context.catalog.resolve(asked.model, asked.steering, asked.user, context.board)
        row = context.row_request(target, asked)
        response_id = prefix + secrets.token_hex(12)
        headers = {VARIANT_HEADER: target.header_variant} if target.header_variant else {}
        run = RowRun(context.batcher, row)
        pieces = answer(run, context.decode, asked.sampling.stop, received)
        if asked.stream:
            return StreamingResponse(
                self._stream(request, asked, target, response_id, run, pieces, received),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        watcher = asyncio.create_task(_abandon_on_disconnect(request, run))
        try:
            outcome = await _until_done(pieces)
        finally:
            watcher.cancel()
        await self._store(asked, target, response_id, outcome)
        body = completion_body(
            asked, response_id, outcome.text, outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens
        )
        return JSONResponse(body, headers=headers)

    async def _stream(
        self,
        request: Request,
        asked: ApiRequest,
        target: Target,
        response_id: str,
        run: RowRun,
        pieces: AsyncGenerator[str | Outcome, None],
        received: float,
    ) -> AsyncIterator[bytes]:
        created = int(time.time())
        watcher = asyncio.create_task(_abandon_on_disconnect(request, run))
        sent: list[str] = []
        left = True  # until the stream ends or fails on its own: the client went away mid-stream
        try:
            if asked.endpoint == "chat":
                yield event(chunk_body(asked, response_id, created, "", None, first=True))
            outcome: Outcome | None = None
            try:
                async for piece in pieces:
                    if isinstance(piece, Outcome):
                        outcome = piece
                    else:
                        sent.append(piece)
                        yield event(chunk_body(asked, response_id, created, piece, None))
                assert outcome is not None
                left = False
                await self._store(asked, target, response_id, outcome)
            except ApiError as error:  # the status line is sent already: say it in the stream
                left = False
                yield event(error.body())
                return
            yield event(chunk_body(asked, response_id, created, None, outcome.finish_reason))
            if asked.include_usage:
                yield event(usage_chunk(asked, response_id, created, outcome.prompt_tokens, outcome.completion_tokens))
            yield event("[DONE]")
        finally:
            watcher.cancel()
            if left:
                # The stream was cancelled (the client disconnected): no await may run here, so the
                # abandoned answer is queued for the writer without waiting for its commit.
                run.abandon()
                self._store_abandoned(asked, target, response_id, run, "".join(sent), received)
            await pieces.aclose()

    def _store_abandoned(
        self, asked: ApiRequest, target: Target, response_id: str, run: RowRun, text: str, received: float
    ) -> None:
        """Store what a client that left mid-stream was sent, as "cancelled": abandonment is an A/B signal."""
        ended = time.perf_counter()
        outcome = Outcome(
            text,
            "stop",
            "cancelled",
            run.prompt_tokens,
            run.tokens,
            (run.first_token_at or ended) - received,
            ended - received,
        )

        def done(error: BaseException | None) -> None:
            if error is not None:
                log.error("The abandoned response %s could not be stored: %s", response_id, error)

        self.context.responses.submit(_served_response(asked, target, response_id, outcome), done)

    async def _store(self, asked: ApiRequest, target: Target, response_id: str, outcome: Outcome) -> None:
        row = _served_response(asked, target, response_id, outcome)
        try:
            await self.context.responses.store(row)
        except Exception as exc:
            log.error("Response %s could not be stored: %s", response_id, exc)
            raise ApiError(
                500,
                "The answer could not be stored, so it is not given (the store failed); send the request again.",
                code="store_failed",
            ) from None


def _served_response(asked: ApiRequest, target: Target, response_id: str, outcome: Outcome) -> ServedResponse:
    return ServedResponse(
        response_id=response_id,
        experiment=target.experiment,
        deployment=target.deployment,
        assigned_variant=target.assigned,
        served_variant=target.served,
        steering_json=target.steering_json,
        user_key=user_key(asked.user),
        endpoint=asked.endpoint,
        request_text=asked.request_text,
        response_text=outcome.text,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        first_token_seconds=outcome.first_token_seconds,
        latency_seconds=outcome.latency_seconds,
        finish_reason=outcome.stored_reason,
        created_at=datetime.now(UTC),
    )


async def _read_body(request: Request, limit: int) -> Mapping[str, Any]:
    """The JSON object of the body; one that announces more than ``limit`` bytes is refused unread."""
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise ApiError(413, f"The request body is {announced} bytes, above this server's limit of {limit}; send less.")
    return read_json(await request.body(), limit)


async def _until_done(pieces: AsyncGenerator[str | Outcome, None]) -> Outcome:
    """Run a row to its end (its text pieces are not needed: the whole text comes with the outcome)."""
    try:
        async for piece in pieces:
            if isinstance(piece, Outcome):
                return piece
        raise AssertionError("answer() ends with its outcome")
    finally:
        await pieces.aclose()


async def _abandon_on_disconnect(request: Request, run: RowRun) -> None:
    """Cancel ``run`` when the client disconnects (a streamed response's task is also cancelled then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            run.abandon()
            return


async def _store_call(call: Callable[[], Any], status: int = 400) -> Any:
    """A store call off the event loop; its SteerLabError becomes a refusal with the same sentence."""
    try:
        return await asyncio.to_thread(call)
    except SteerLabError as exc:
        raise ApiError(status, str(exc)) from None


def _text(data: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        need = "is missing" if value is None else "is not a text"
        raise bad_request(f"Field '{name}' {need}; send it as a string.", name)
    return value


def _bearer_matches(request: Request, key: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), key.encode())


def _deployment_json(deployment: Deployment) -> dict[str, Any]:
    data = dataclasses.asdict(deployment)
    data["arms"] = [dataclasses.asdict(a) for a in deployment.arms]
    return data


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _steerlab_error(_request: Request, exc: Exception) -> Response:
    return JSONResponse(bad_request(field_sentence(str(exc))).body(), status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found"
    headers: dict[str, str] = {}
    if exc.status_code == 404:
        message = "No such endpoint; this server offers /v1/chat/completions, /v1/completions and /v1/models."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        headers = {"Allow": allowed} if allowed else {}
        use = " or ".join(m.strip() for m in allowed.split(",") if m.strip() and m.strip() != "HEAD") or "another"
        method = short(printable(request.method), 20)
        message = f"{request.url.path} does not take {method} requests; use {use}."
        code = "method_not_allowed"
    else:
        message = str(exc.detail)
    error = ApiError(exc.status_code, message, code=code)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=headers)


async def _server_error(_request: Request, exc: Exception) -> Response:
    log.exception("A request failed inside the server", exc_info=exc)
    error = ApiError(
        500, f"The server failed on this request ({type(exc).__name__}); it keeps serving, and its log has the details."
    )
    return JSONResponse(error.body(), status_code=500)
