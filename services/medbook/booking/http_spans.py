"""The HTTP server span of each request, made in full only for the traces the sampler keeps.

The OpenTelemetry ASGI instrumentation builds every request's attributes (URL, headers,
client, semantic-convention variants) and wraps every ``send`` before it knows whether the
trace is kept; at 10 % sampling that was 7 % of the booking service's CPU for spans nobody
receives. Here the sampler decides first (one ``start_span``, parent-based on the
request's ``traceparent``), and only a recording span gets attributes, a status and the
route's name. A dropped request still runs inside its (non-recording) span, so the trace
id the API returns, the logs and the messages it publishes carry a real trace id and the
not-sampled flag the rest of the saga follows.

Attributes are the current HTTP server conventions (``http.request.method``,
``url.path``, ``http.route``, ``http.response.status_code``...); the query string, the
headers and the body are never recorded (docs/security.md: no personal data in spans).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from medbook.booking.middleware import OPEN_PATHS, ResponseStatus
from medbook.telemetry import extract_context

tracer = trace.get_tracer("medbook.booking")

_PROPAGATED = (b"traceparent", b"tracestate", b"baggage")


def request_parent(scope: Scope) -> Context | None:
    """The caller's trace context (W3C headers), or None for a new trace."""
    carried = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name in _PROPAGATED
    }
    return extract_context(carried) if carried else None


def request_attributes(scope: Scope) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": scope["method"],
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    server = scope.get("server")
    if server:
        attributes["server.address"], attributes["server.port"] = server[0], server[1]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    return attributes


class ServerSpans:
    """A ``SERVER`` span per HTTP request (but not the probes' and the scrape's paths)."""

    def __init__(self, app: ASGIApp, excluded: Collection[str] = OPEN_PATHS) -> None:
        self.app = app
        self.excluded = frozenset(excluded)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.excluded:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        span = tracer.start_span(method, context=request_parent(scope), kind=SpanKind.SERVER)
        if not span.is_recording():  # a dropped trace: its context, nothing more
            with trace.use_span(span, end_on_exit=True):
                await self.app(scope, receive, send)
            return
        span.set_attributes(request_attributes(scope))
        response = ResponseStatus(send)
        # use_span records an exception escaping the app and sets the span's status.
        with trace.use_span(span, end_on_exit=True):
            try:
                await self.app(scope, receive, response)
            finally:
                status = response.status
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
