"""Logging, OpenTelemetry setup and W3C trace-context propagation.

Tracing always runs the OpenTelemetry SDK, so the ``traceId`` the API returns
is a real trace id. Spans are recorded, and the libraries instrumented
(ASGI, asyncpg, Redis, aio-pika), when the standard ``OTEL_*`` variables name
an exporter (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_TRACES_EXPORTER=otlp``)
or choose a sampler. Otherwise ("tracing off") no span is recorded: the trace
context still travels with every event, in the AMQP headers and the outbox
rows, and every log line of a booking's processing carries its trace id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from medbook.config import TelemetrySettings

# Record attributes that are not a line's own fields; uvicorn's `color_message` repeats the
# message with ANSI colour escapes for its own console formatter.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the trace and span ids of the current span."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", None)
        for key, value in record.__dict__.items():
            if (
                key not in _RESERVED
                and key not in ("trace_id", "span_id")
                and not key.startswith("_")
            ):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(trace_suffix)s")

    def format(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", None)
        record.trace_suffix = f"  [trace {trace_id}]" if trace_id else ""
        return super().format(record)


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` of the active span to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


def setup_logging(settings: TelemetrySettings, service: str) -> None:
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter(service))
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Libraries that log every connection attempt at INFO drown the saga's own lines;
    # ``databases`` logs every query with its arguments at DEBUG (personal data).
    for noisy in ("aiormq", "aio_pika", "uvicorn.access", "databases"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def exporter_configured() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


_recording = False


def recording() -> bool:
    """Are spans recorded (and the libraries instrumented)?"""
    return _recording


Library = Literal["asyncpg", "redis", "aio_pika"]


def instrument_libraries(libraries: Iterable[Library]) -> None:
    """Spans for every PostgreSQL statement, Redis command and AMQP publish/consume that
    the process makes (each service names the libraries it uses).

    The aio-pika instrumentation also carries the context through the message
    headers: its consume span is current while a handler runs.
    """
    instrumentors: list[BaseInstrumentor] = []
    for library in libraries:
        if library == "asyncpg":
            from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

            # The package's __init__ has no annotations.
            instrumentors.append(AsyncPGInstrumentor())  # type: ignore[no-untyped-call]
        elif library == "redis":
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            instrumentors.append(RedisInstrumentor())
        else:
            from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

            instrumentors.append(AioPikaInstrumentor())
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def setup_tracing(service: str, libraries: Iterable[Library] = ()) -> TracerProvider:
    """Install the SDK tracer provider (once per process) and return it."""
    global _recording
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", service),
            "service.namespace": "medbook",
        }
    )
    sampler = None  # None: the SDK reads OTEL_TRACES_SAMPLER (default: parent-based, always on)
    if not exporter_configured() and "OTEL_TRACES_SAMPLER" not in os.environ:
        # Nobody would receive the spans: keep real ids and propagation, skip the recording.
        sampler = ALWAYS_OFF
    provider = TracerProvider(resource=resource, sampler=sampler)
    _recording = sampler is None and os.environ.get("OTEL_TRACES_SAMPLER", "") != "always_off"
    if _recording:
        instrument_libraries(libraries)
    if exporter_configured():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


@contextlib.contextmanager
def span(
    tracer: trace.Tracer,
    name: str,
    *,
    context: Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """A span when spans are recorded; otherwise only the parent's context, made current.

    Either way the trace id flows on (into logs and into the headers of the
    messages published inside), but with tracing off no span is created for
    each step of each booking.
    """
    if _recording:
        with tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=attributes
        ) as s:
            yield s
    elif context is not None:
        token = otel_context.attach(context)
        try:
            yield trace.get_current_span()
        finally:
            otel_context.detach(token)
    else:
        yield trace.get_current_span()


@contextlib.contextmanager
def use_context(context: Context) -> Iterator[None]:
    """Make ``context`` (e.g. one extracted from stored headers) current for a block."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def consumer_parent(headers: Mapping[str, Any] | None) -> Context | None:
    """The parent of a message handler's span.

    With tracing on, the aio-pika instrumentation's consume span (a child of
    the publisher's context) is current already: None. With it off, the
    context carried in the headers.
    """
    return None if _recording else extract_context(headers)


def inject_headers(context: Context | None = None) -> dict[str, str]:
    """The W3C ``traceparent``/``tracestate`` of the current (or given) context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, Any] | None) -> Context:
    carrier = {
        k: (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in (headers or {}).items()
        if k in ("traceparent", "tracestate", "baggage")
    }
    return propagate.extract(carrier)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
