"""Logging, OpenTelemetry setup and W3C trace-context propagation.

Tracing always runs the OpenTelemetry SDK, so the ``traceId`` the API returns
is a real trace id. Spans are recorded, and the libraries instrumented
(asyncpg, Redis), when the standard ``OTEL_*`` variables name
an exporter (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_TRACES_EXPORTER=otlp``)
or choose a sampler. Otherwise ("tracing off") no span is recorded: the trace
context still travels with every event, in the AMQP headers and the outbox
rows, and every log line of a booking's processing carries its trace id.

Sampling is the standard ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``
(in production ``parentbased_traceidratio`` with a ratio such as ``0.1``: the
booking service decides at the HTTP request, and every later step of the
saga, in either service, follows the decision the trace context carries). An
unknown sampler or a ratio that is not a number from 0 to 1 stops the process
at start with the reason, where the SDK alone would trace everything.

Messaging spans are medbook's own and follow the current OpenTelemetry conventions for
RabbitMQ: each publish is a ``PRODUCER`` span whose context travels in the message's
headers, and each handler's span is the message's ``process`` span (``CONSUMER``), its
child, linked to it. Only kept traces get either (a dropped trace's context travels as
it is): at 10 % sampling, nine messages in ten cost no span.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from medbook.config import TelemetrySettings

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

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


@dataclass(frozen=True)
class Sampling:
    """A sampler chosen by the standard variables, and the share of new traces it keeps."""

    name: str
    ratio: float

    @property
    def parent_based(self) -> bool:
        return self.name.startswith("parentbased_")

    def sampler(self) -> Sampler:
        root: Sampler = (
            TraceIdRatioBased(self.ratio)
            if "traceidratio" in self.name
            else (ALWAYS_ON if self.ratio else ALWAYS_OFF)
        )
        return ParentBased(root) if self.parent_based else root


SAMPLERS: Final = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)  # fmt: skip


def sampling_from_environment(environ: Mapping[str, str] | None = None) -> Sampling | None:
    """What ``OTEL_TRACES_SAMPLER`` (and ``OTEL_TRACES_SAMPLER_ARG``) choose; None when unset.

    Raises ValueError for an unknown sampler or a ratio that is not a number from 0 to 1
    (the SDK would only log a warning, and keep every trace).
    """
    env = os.environ if environ is None else environ
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return None
    if name not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r} is not one of {', '.join(SAMPLERS)}")
    if "traceidratio" not in name:
        return Sampling(name, 0.0 if name.endswith("always_off") else 1.0)
    text = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(text) if text else 1.0  # the specification's default
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER_ARG={text!r} is not a sampling ratio from 0 to 1 "
            f"(for OTEL_TRACES_SAMPLER={name})"
        )
    return Sampling(name, ratio)


_recording = False


def recording() -> bool:
    """Are spans recorded (and the libraries instrumented)?"""
    return _recording


def sampled(context: Context | None = None) -> bool:
    """Is the current (or given) context's span one that is kept, so that its children are
    worth creating? False with tracing off, with no span, and in a trace the sampler dropped:
    at 10 % sampling that is nine bookings in ten, and their steps then cost no span."""
    if not _recording:
        return False
    flags = trace.get_current_span(context).get_span_context().trace_flags
    return flags.sampled


def _dropped(context: Context | None) -> bool:
    """A valid parent whose trace the sampler dropped: its children would be dropped too
    (the sampler is parent-based), so they are not created (their context is the parent's)."""
    parent = trace.get_current_span(context).get_span_context()
    return parent.is_valid and not parent.trace_flags.sampled


class SampledOnlyTracer(trace.Tracer):
    """The SDK's tracer, but a span whose parent is in a dropped trace is that parent.

    Under a parent-based sampler such a child would be dropped too; the SDK still asks the
    sampler, draws a span id and makes a new non-recording span for it, for every
    statement, command and publish the library instrumentations wrap (about 5 us each, a
    dozen times per booking). Here the parent itself serves: the trace id, the parent span
    id and the not-sampled flag go on unchanged into logs and message headers. A root
    (no valid parent) and a child of a kept trace go to the SDK as before.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self, name: str, context: Context | None = None, *args: Any, **kwargs: Any
    ) -> trace.Span:
        if _dropped(context):
            return trace.get_current_span(context)
        return self._tracer.start_span(name, context, *args, **kwargs)

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's is an _AgnosticContextManager
        self, name: str, context: Context | None = None, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        if not _dropped(context):
            with self._tracer.start_as_current_span(name, context, *args, **kwargs) as span:
                yield span
        elif context is None:  # the parent is current already
            yield trace.get_current_span()
        else:
            with use_context(context):
                yield trace.get_current_span()


class SampledOnlyTracerProvider(TracerProvider):
    """The SDK's provider whose tracers are :class:`SampledOnlyTracer`: in a trace the
    sampler dropped (nine in ten at 10 %), neither our code nor the instrumented libraries
    create a span per step."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return SampledOnlyTracer(super().get_tracer(*args, **kwargs))


Library = Literal["asyncpg", "redis"]


def instrument_libraries(libraries: Iterable[Library]) -> None:
    """Spans for every PostgreSQL statement and Redis command that the process makes (each
    service names the libraries it uses; AMQP spans are medbook's own, see above)."""
    instrumentors: list[BaseInstrumentor] = []
    for library in libraries:
        if library == "asyncpg":
            from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

            # The package's __init__ has no annotations.
            instrumentors.append(AsyncPGInstrumentor())  # type: ignore[no-untyped-call]
        else:
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            instrumentors.append(RedisInstrumentor())
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


class HashedOnceResource(Resource):
    """A resource whose hash is computed once. The OTLP encoder groups every exported span
    by its resource, and the SDK's hash serialises the attributes to JSON each time (2 %
    of a service's CPU with every trace kept). The attributes are immutable."""

    @functools.cached_property
    def _hash(self) -> int:
        return super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


def setup_tracing(service: str, libraries: Iterable[Library] = ()) -> TracerProvider:
    """Install the SDK tracer provider (once per process) and return it."""
    global _recording
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    created = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", service),
            "service.namespace": "medbook",
        }
    )
    resource = HashedOnceResource(created.attributes, created.schema_url)
    chosen = sampling_from_environment()
    if chosen is not None:
        sampler = chosen.sampler()
        # Only a sampler that can never keep a span (a parent-based one follows its callers).
        _recording = chosen.parent_based or chosen.ratio > 0
    elif exporter_configured():
        sampler, _recording = ParentBased(ALWAYS_ON), True  # the specification's default
    else:
        # Nobody would receive the spans: keep real ids and propagation, skip the recording.
        sampler, _recording = ALWAYS_OFF, False
    provider = SampledOnlyTracerProvider(resource=resource, sampler=sampler)
    if _recording:
        instrument_libraries(libraries)
    if exporter_configured():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


# -- messaging conventions -----------------------------------------------------------------

MESSAGING_SYSTEM: Final = "rabbitmq"


def process_attributes(message: AbstractIncomingMessage, queue: str) -> dict[str, Any]:
    """The conventions' attributes of a delivered message's ``process`` span."""
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        # The exchange; "amq.default" for the default exchange (retries are sent there).
        "messaging.destination.name": message.exchange or "amq.default",
        "messaging.consumer.group.name": queue,
        "messaging.message.body.size": len(message.body),
    }
    if message.routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = message.routing_key
    if message.message_id:
        attributes["messaging.message.id"] = message.message_id
    if message.delivery_tag is not None:
        attributes["messaging.rabbitmq.message.delivery_tag"] = message.delivery_tag
    return attributes


def publish_attributes(
    exchange: str,
    routing_key: str,
    body: bytes,
    message_id: str | None,
    server: tuple[str, int] | None,
) -> dict[str, Any]:
    """The conventions' attributes of a publish's ``PRODUCER`` span."""
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": exchange or "amq.default",
        "messaging.message.body.size": len(body),
    }
    if routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
    if message_id:
        attributes["messaging.message.id"] = message_id
    if server is not None:
        attributes["server.address"], attributes["server.port"] = server
    return attributes


@contextlib.contextmanager
def publish_span(
    tracer: trace.Tracer,
    exchange: str,
    routing_key: str,
    body: bytes,
    headers: dict[str, Any],
    *,
    message_id: str | None = None,
    server: tuple[str, int] | None = None,
) -> Iterator[None]:
    """The ``PRODUCER`` span of one publish (up to its confirm), when the current trace is
    kept or new; its context replaces the ``traceparent`` in the message's ``headers``
    (in place), so the consumer's ``process`` span is its child. Otherwise the headers keep
    the context the caller put there (the request's, a stored one, the handler's)."""
    if not _recording or _dropped(None):
        yield
        return
    with tracer.start_as_current_span(
        f"publish {exchange or 'amq.default'}",
        kind=trace.SpanKind.PRODUCER,
        attributes=publish_attributes(exchange, routing_key, body, message_id, server),
    ) as current:
        if current.is_recording():
            propagate.inject(headers)
        yield


def message_context(message: AbstractIncomingMessage) -> Context:
    """The context a delivered message was created in (its W3C headers): the consumer makes
    it current while the message is handled, so logs and retries carry its trace."""
    return extract_context(message.headers)


@contextlib.contextmanager
def process_span(
    tracer: trace.Tracer,
    name: str,
    message: AbstractIncomingMessage,
    queue: str,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """A handler's span: the message's ``process`` span (``CONSUMER``), a child of the
    context the message was created in (current: see :func:`message_context`) and linked
    to it. With tracing off, or in a trace the sampler dropped, none: that context serves.
    """
    creation = trace.get_current_span()
    if not _recording or _dropped(None):
        yield creation
        return
    context = creation.get_span_context()
    with tracer.start_as_current_span(
        name,
        kind=trace.SpanKind.CONSUMER,
        attributes=process_attributes(message, queue) | dict(attributes or {}),
        links=[trace.Link(context)] if context.is_valid else None,
    ) as current:
        yield current


# -- spans and context -----------------------------------------------------------------------


@contextlib.contextmanager
def span(
    tracer: trace.Tracer,
    name: str,
    *,
    context: Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Iterable[trace.Link] = (),
) -> Iterator[trace.Span]:
    """A span when spans are recorded; otherwise only the parent's context, made current.

    Either way the trace id flows on (into logs and into the headers of the
    messages published inside), but with tracing off, or in a trace the
    sampler dropped, no span is created for each step of each booking.
    """
    if _recording and not _dropped(context):
        with tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=attributes, links=list(links) or None
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


def exemplar() -> dict[str, str] | None:
    """The current trace as a metric exemplar, when that trace is sampled (kept by the
    tracing backend): a slow bucket of a histogram then opens a trace that exists."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
