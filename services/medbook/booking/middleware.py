"""ASGI middleware of the booking API: bearer-token authentication, HTTP metrics, and a JSON
500 for a bug that keeps the connection usable."""

from __future__ import annotations

import hmac
import logging
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medbook import metrics
from medbook.booking.errors import error_response

log = logging.getLogger("medbook.booking.errors")

# Reachable without a token: probes and the metrics scrape.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class ResponseStatus:
    """A ``send`` that passes every message on and remembers the response's status
    (0 until the response starts): what the metrics, the server span and the error
    handler each need to know of the response."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on every path but :data:`OPEN_PATHS`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, credentials = given.partition(b" ")
        # The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials, self.token):
            await self.app(scope, receive, send)
            return
        message = "Missing bearer token" if not given else "Invalid bearer token"
        response = error_response(
            Request(scope), 401, message, headers={"WWW-Authenticate": 'Bearer realm="medbook"'}
        )
        await response(scope, receive, send)


class HttpMetrics:
    """Counts requests and observes latency by route template (never by raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response = ResponseStatus(send)
        try:
            await self.app(scope, receive, response)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            status = response.status or 500  # no response started: the app failed
            metrics.HTTP_REQUESTS.labels(method, template, str(status)).inc()
            metrics.HTTP_DURATION.labels(method, template).observe(time.perf_counter() - started)


class UnexpectedErrors:
    """Answers a bug with a JSON 500 and keeps the connection.

    Starlette's own handler re-raises after answering, so uvicorn closes the
    keep-alive connection and a request pipelined behind the failed one gets no
    answer. Here the error is logged (with its traceback) and the connection
    stays usable; only a failure after the response started has to end it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = ResponseStatus(send)
        try:
            await self.app(scope, receive, response)
        except Exception as exc:
            if response.status:  # the response started: it cannot be replaced
                raise
            request = Request(scope)
            log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
            await error_response(request, 500, "Internal Server Error")(scope, receive, send)
