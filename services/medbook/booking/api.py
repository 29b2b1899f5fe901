"""The booking API's endpoints: the reference's contract, plus cancel and the probes."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medbook import metrics
from medbook.booking import catalog
from medbook.booking.errors import ApiError, JSONResponse, ValidationFailed
from medbook.booking.openapi import openapi_document
from medbook.booking.store import (
    CancelOutcome,
    Created,
    CreateRequest,
    booking_json,
    history_entry,
    utcnow,
)
from medbook.booking.validation import (
    GENDER_PROBLEM,
    check_idempotency_key,
    parse_booking_request,
)
from medbook.contracts import BookingCreated, BookingStatus, Gender, ReleaseReason, ServiceItem
from medbook.messaging import is_unavailable
from medbook.telemetry import current_trace_id, extract_context, inject_headers, recording

if TYPE_CHECKING:
    from medbook.booking.app import BookingService

log = logging.getLogger(__name__)
tracer = trace.get_tracer("medbook.booking")

MAX_BODY_BYTES = 64 * 1024
CREATED_MESSAGE = "Booking request received. Processing..."


def replay_message(status: BookingStatus) -> str:
    """What a replayed create answers: still processing, or the booking's final status."""
    if status is BookingStatus.PENDING:
        return CREATED_MESSAGE
    return f"Booking request already received: the booking is {status.value}"


Endpoint = Callable[[Request], Awaitable[Response]]


def _service(request: Request) -> BookingService:
    return request.app.state.service


def guarded(endpoint: Endpoint) -> Endpoint:
    """Turns a database or broker outage into a quick JSON 503 instead of a 500."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError:
            raise
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            log.warning("%s %s: dependency unavailable: %r", request.method, request.url.path, exc)
            raise ApiError(
                503,
                "Service temporarily unavailable: the database cannot be reached",
                headers={"Retry-After": "2"},
            ) from exc

    return wrapper


async def read_json_body(request: Request) -> object:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "Content-Type must be application/json")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"Request body is larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"Request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ValidationFailed(["request body must be valid JSON"]) from None


def parse_booking_id(request: Request) -> uuid.UUID:
    raw = request.path_params["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "Validation failed (uuid is expected)") from None


async def list_services(request: Request) -> Response:
    gender_param = request.query_params.get("gender")
    gender: Gender | None = None
    if gender_param is not None:
        try:
            gender = Gender(gender_param)
        except ValueError:
            raise ValidationFailed([GENDER_PROBLEM]) from None
    return JSONResponse([item.as_json() for item in catalog.offered(gender)])


@guarded
async def create_booking(request: Request) -> Response:
    body = await read_json_body(request)
    booking, problems = parse_booking_request(body)
    if booking is None:
        raise ValidationFailed(problems)
    try:
        key = check_idempotency_key(request.headers.get("idempotency-key"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    items = []
    for name in booking.service_names:
        item = catalog.BY_NAME.get(name)
        if item is None:
            raise ApiError(400, f"Service '{name}' does not exist")
        if not item.offered_to(booking.gender):
            raise ApiError(
                400, f"Service '{name}' is not available for gender '{booking.gender.value}'"
            )
        items.append(ServiceItem(name=item.name, price=item.price))

    service = _service(request)
    await service.admission.admit()
    now = utcnow()
    # With tracing on, the ASGI middleware's server span is the parent; with it off, that
    # middleware is not installed and a caller's traceparent is honoured here.
    parent = None if recording() else extract_context(request.headers)
    with tracer.start_as_current_span("booking.create", context=parent) as span:
        booking_id = uuid.uuid4()
        span.set_attribute("medbook.booking_id", str(booking_id))
        event = BookingCreated(
            booking_id=booking_id,
            user_id=booking.user_id,
            user_name=booking.user_name,
            gender=booking.gender,
            dob=booking.dob,
            services=tuple(items),
            base_price=sum(i.price for i in items),
            trace_id=current_trace_id(),
            created_at=now,
        )
        outcome = await service.creates.submit(
            CreateRequest(
                event=event,
                history=[history_entry(now, "Booking Created (Pending)")],
                headers=inject_headers(),
                idempotency_key=key,
                fingerprint=booking.fingerprint(),
            )
        )
    if outcome.created is Created.KEY_REUSED:
        raise ApiError(
            422,
            f"Idempotency-Key '{key}' was already used with a different request body "
            f"(booking {outcome.booking_id})",
        )
    headers = {"Location": f"/booking/{outcome.booking_id}"}
    if outcome.created is Created.NEW:
        service.relay.wake()
        metrics.BOOKINGS_CREATED.inc()
    else:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        {
            "message": CREATED_MESSAGE
            if outcome.created is Created.NEW
            else replay_message(outcome.status),
            "bookingId": str(outcome.booking_id),
            "traceId": outcome.trace_id,
            "status": outcome.status.value if outcome.created is Created.REPLAYED else "PENDING",
        },
        status_code=201,
        headers=headers,
    )


@guarded
async def get_booking(request: Request) -> Response:
    booking_id = parse_booking_id(request)
    row = await _service(request).store.get(booking_id)
    if row is None:
        raise ApiError(404, f"Booking with ID {booking_id} not found")
    return JSONResponse(booking_json(row))


@guarded
async def cancel_booking(request: Request) -> Response:
    booking_id = parse_booking_id(request)
    service = _service(request)
    outcome, previous = await service.store.cancel(booking_id)
    if outcome is CancelOutcome.NOT_FOUND:
        raise ApiError(404, f"Booking with ID {booking_id} not found")
    if outcome is CancelOutcome.NOT_CANCELLABLE and previous is not BookingStatus.CANCELLED:
        raise ApiError(409, f"Booking {booking_id} cannot be cancelled: it is {previous}")
    if outcome is CancelOutcome.CANCELLED:
        service.relay.wake()
        metrics.QUOTA_RELEASE_REQUESTS.labels(ReleaseReason.CANCELLED.value).inc()
        if previous is BookingStatus.PENDING:
            metrics.SAGA_OUTCOMES.labels(BookingStatus.CANCELLED.value, "cancelled").inc()
    row = await service.store.get(booking_id)
    assert row is not None
    return JSONResponse(booking_json(row))


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    wanted = request.query_params.getlist("check") or ["database", "broker"]
    unknown = [c for c in wanted if c not in ("database", "broker")]
    if unknown:
        raise ApiError(400, f"unknown readiness check(s): {', '.join(unknown)} (database, broker)")
    checks = await _service(request).readiness(wanted)
    ok = all(checks.values())
    return JSONResponse(
        {
            "status": "ok" if ok else "unavailable",
            "checks": {k: "ok" if v else "down" for k, v in checks.items()},
        },
        status_code=200 if ok else 503,
    )


async def metrics_endpoint(_: Request) -> Response:
    return Response(
        metrics.exposition(metrics.BOOKING), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


async def openapi(_: Request) -> Response:
    return JSONResponse(openapi_document())


ROUTES = [
    Route("/booking/services", list_services, methods=["GET"]),
    Route("/booking", create_booking, methods=["POST"]),
    Route("/booking/{id}", get_booking, methods=["GET"]),
    Route("/booking/{id}/cancel", cancel_booking, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
