"""JSON errors in the reference system's shape, for every status the API can answer.

``{code, message, error, timestamp, path}``; a failed validation has
``message: "Validation failed"`` and ``error`` listing one message per problem.
"""

from __future__ import annotations

import http
from collections.abc import Mapping, Sequence

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from medbook.http_protocol import error_document


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error answered to the client as JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error: str | Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error if error is not None else http.HTTPStatus(status).phrase
        self.headers = dict(headers or {})


class ValidationFailed(ApiError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(400, "Validation failed", error=list(problems))


def error_response(
    request: Request | None,
    status: int,
    message: str,
    error: str | Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_document(status, message, request.url.path if request is not None else None)
    if error:
        body["error"] = list(error) if isinstance(error, list | tuple) else error
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.message, exc.error, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, wrong method) as JSON."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Cannot {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(request, exc.status_code, message, headers=exc.headers)
