"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` and an HTTP status."""

from __future__ import annotations

import re
from typing import Any


class ApiError(Exception):
    """A request the server refuses (or failed): one sentence, with its HTTP status and OpenAI type."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or _KINDS.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# The OpenAI API's error types by status (what its client raises: AuthenticationError, NotFoundError...).
_KINDS = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# engine.fields.Where's sentence for a request's field: "request, field PATH: PROBLEM; FIX."
_FIELD_ERROR = re.compile(r"^request, field (?P<path>[^:]+?)(?: \(line \d+\))?: (?P<rest>.+)$", re.DOTALL)
_VERBS = ("is ", "are ", "has ", "have ", "holds ", "must ", "needs ", "expected ", "names ", "gives ")


def field_sentence(message: str) -> str:
    """A field error of a request as a sentence that starts with the field.

    ``request, field steering.edits[0].coefficient: is 9, beyond…`` becomes
    ``steering.edits[0].coefficient is 9, beyond…``; a problem that is a sentence of its own
    (``layer 7 is out of range``) becomes ``In steering.edits[0].layers, layer 7 is out of range``.
    """
    found = _FIELD_ERROR.match(message)
    if found is None:
        return message
    path, rest = found["path"], found["rest"]
    if rest.startswith(_VERBS):
        return f"{path} {rest}"
    return f"In {path}, {rest}"
