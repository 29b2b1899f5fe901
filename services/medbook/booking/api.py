"""The booking API's endpoints: the reference's contract, plus cancel and the probes."""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medbook import metrics, probes
from medbook.booking import catalog
from medbook.booking.domain import BookingRefused, CancelVerdict
from medbook.booking.errors import ApiError, JSONResponse, ValidationFailed
from medbook.booking.openapi import openapi_document
from medbook.booking.store import Created
from medbook.booking.validation import (
    GENDER_PROBLEM,
    check_idempotency_key,
    parse_booking_request,
)
from medbook.booking.views import booking_json
from medbook.clock import utcnow
from medbook.contracts import BookingStatus, Gender
from medbook.failures import DependencyBusy, DependencyError, InvalidData
from medbook.telemetry import extract_context, recording

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
    service: BookingService = request.app.state.service
    return service


def guarded(endpoint: Endpoint) -> Endpoint:
    """Turns a database or broker outage into a quick JSON 503 naming it, instead of a 500."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except DependencyError as exc:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            problem = "is overloaded" if isinstance(exc, DependencyBusy) else "cannot be reached"
            raise ApiError(
                503,
                f"Service temporarily unavailable: {exc.what} {problem}",
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
    return parse_json(b"".join(chunks))


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValidationFailed([f"request body has the key '{key}' twice"])
        seen[key] = value
    return seen


def parse_json(raw: bytes) -> object:
    """The body's JSON; a key given twice is an ambiguous request (400), not "the last wins"."""
    try:
        body = orjson.loads(raw)  # fast, and it bounds the nesting depth
    except orjson.JSONDecodeError:
        raise ValidationFailed(["request body must be valid JSON"]) from None
    if isinstance(body, dict | list):
        try:
            json.loads(raw, object_pairs_hook=_refuse_duplicates)
        except RecursionError:
            raise ValidationFailed(["request body is nested too deeply"]) from None
    return body


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
    today = utcnow().astimezone(_service(request).zone).date()
    booking, problems = parse_booking_request(body, today)
    if booking is None:
        raise ValidationFailed(problems)
    try:
        key = check_idempotency_key(request.headers.get("idempotency-key"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    # With tracing on, the ASGI middleware's server span is the parent; with it off, that
    # middleware is not installed and a caller's traceparent is honoured here.
    parent = None if recording() else extract_context(request.headers)
    try:
        outcome = await _service(request).bookings.create(booking, key, parent=parent)
    except BookingRefused as exc:
        raise ApiError(400, str(exc)) from None
    except InvalidData as exc:
        raise ApiError(422, f"The booking cannot be stored: {exc.detail}") from None
    if outcome.created is Created.KEY_REUSED:
        raise ApiError(
            422,
            f"Idempotency-Key '{key}' was already used with a different request body "
            f"(booking {outcome.booking_id})",
        )
    headers = {"Location": f"/booking/{outcome.booking_id}"}
    if outcome.created is Created.REPLAYED:
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
    row = await _service(request).bookings.get(booking_id)
    if row is None:
        raise ApiError(404, f"Booking with ID {booking_id} not found")
    return JSONResponse(booking_json(row))


@guarded
async def cancel_booking(request: Request) -> Response:
    booking_id = parse_booking_id(request)
    cancelled = await _service(request).bookings.cancel(booking_id)
    decision = cancelled.decision
    if decision is None or cancelled.booking is None:
        raise ApiError(404, f"Booking with ID {booking_id} not found")
    if decision.verdict is CancelVerdict.NOT_CANCELLABLE:
        raise ApiError(409, f"Booking {booking_id} cannot be cancelled: it is {decision.previous}")
    return JSONResponse(booking_json(cancelled.booking))


async def readyz(request: Request) -> Response:
    wanted = request.query_params.getlist("check") or ["database", "broker"]
    unknown = [c for c in wanted if c not in ("database", "broker")]
    if unknown:
        raise ApiError(400, f"unknown readiness check(s): {', '.join(unknown)} (database, broker)")
    return probes.readiness(await _service(request).readiness(wanted))


async def openapi(_: Request) -> Response:
    return JSONResponse(openapi_document())


ROUTES = [
    Route("/booking/services", list_services, methods=["GET"]),
    Route("/booking", create_booking, methods=["POST"]),
    Route("/booking/{id}", get_booking, methods=["GET"]),
    Route("/booking/{id}/cancel", cancel_booking, methods=["POST"]),
    Route("/healthz", probes.healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", probes.metrics_endpoint(metrics.BOOKING), methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
