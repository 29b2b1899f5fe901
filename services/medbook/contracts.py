"""The saga's wire contract: the only thing the booking and discount services share.

Events travel as persistent AMQP messages whose body is the JSON of one model
below, whose ``type`` property names the event and whose headers carry the
contract version and the W3C trace context of the request that caused them.
Field names are camelCase on the wire, as the reference system's clients and
its ``booking_created``/``discount_processed`` messages use them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTRACT_VERSION: Final = 1
CONTRACT_VERSION_HEADER: Final = "x-medbook-contract"

EXCHANGE: Final = "medbook.saga"
DEAD_LETTER_EXCHANGE: Final = "medbook.dead-letter"

DISCOUNT_QUEUE: Final = "discount_queue"
BOOKING_QUEUE: Final = "booking_queue"


def dead_letter_queue(queue: str) -> str:
    """Name of the queue that receives ``queue``'s dead letters."""
    return f"{queue}.dlq"


# Headers of a dead-lettered message, written by the consumer that gave up on it.
DEAD_LETTER_REASON_HEADER: Final = "x-medbook-dead-letter-reason"
DEAD_LETTER_TRIES_HEADER: Final = "x-medbook-tries"
DEAD_LETTER_QUEUE_HEADER: Final = "x-medbook-original-queue"
DEAD_LETTER_AT_HEADER: Final = "x-medbook-dead-lettered-at"
# How many times a consumer has already failed to process a message.
ATTEMPT_HEADER: Final = "x-medbook-attempt"


class Event(StrEnum):
    BOOKING_CREATED = "booking_created"
    DISCOUNT_PROCESSED = "discount_processed"
    QUOTA_RELEASED = "quota_released"


# Routing key of each event (the event name) and the queue it lands in.
EVENT_QUEUE: Final[dict[Event, str]] = {
    Event.BOOKING_CREATED: DISCOUNT_QUEUE,
    Event.QUOTA_RELEASED: DISCOUNT_QUEUE,
    Event.DISCOUNT_PROCESSED: BOOKING_QUEUE,
}


class BookingStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


TERMINAL_STATUSES: Final = frozenset(
    {BookingStatus.CONFIRMED, BookingStatus.REJECTED, BookingStatus.CANCELLED}
)


class Gender(StrEnum):
    MALE = "Male"
    FEMALE = "Female"
    OTHER = "Other"


class SagaState(StrEnum):
    """Progress states of the discount step, as the reference names them."""

    VALIDATING_ELIGIBILITY = "VALIDATING_ELIGIBILITY"
    CHECKING_QUOTA = "CHECKING_QUOTA"
    APPLYING_DISCOUNT = "APPLYING_DISCOUNT"
    NO_DISCOUNT = "NO_DISCOUNT"
    COMPENSATING = "COMPENSATING"


BLOCKED_USER_REASON: Final = "User is blacklisted"
QUOTA_EXHAUSTED_REASON: Final = "Daily discount quota reached. Please try again tomorrow."
TIMEOUT_REASON: Final = "System timeout: Discount service did not respond"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class ServiceItem(_Message):
    name: str
    price: Annotated[int, Field(ge=0)]


class BookingCreated(_Message):
    """Booking service -> discount worker: a booking waits for its discount decision."""

    booking_id: uuid.UUID = Field(alias="bookingId")
    user_id: str = Field(alias="userId")
    user_name: str = Field(alias="userName")
    gender: Gender
    dob: dt.date
    services: tuple[ServiceItem, ...]
    base_price: Annotated[int, Field(ge=0)] = Field(alias="basePrice")
    trace_id: str = Field(alias="traceId")
    created_at: dt.datetime = Field(alias="createdAt")


class SagaStep(_Message):
    state: SagaState
    message: str
    at: dt.datetime


class DiscountProcessed(_Message):
    """Discount worker -> booking service: the one result of a booking's discount step.

    ``resultId`` is fixed when the worker first stores the result, so every
    re-delivery of the same result carries the same id. ``quotaDay`` is set
    when a quota unit is held for this booking on that day.
    """

    booking_id: uuid.UUID = Field(alias="bookingId")
    result_id: uuid.UUID = Field(alias="resultId")
    is_allowed: bool = Field(alias="isAllowed")
    status: BookingStatus
    final_price: Annotated[int, Field(ge=0)] | None = Field(default=None, alias="finalPrice")
    reason: str | None = None
    quota_day: dt.date | None = Field(default=None, alias="quotaDay")
    steps: tuple[SagaStep, ...] = ()
    trace_id: str = Field(alias="traceId")
    processed_at: dt.datetime = Field(alias="processedAt")


class ReleaseReason(StrEnum):
    CANCELLED = "cancelled"
    SWEPT = "swept"  # no longer emitted (see QuotaReleased); still understood
    LATE_RESULT = "late_result"
    ORPHAN_RESULT = "orphan_result"  # a result for a booking that does not exist


class QuotaReleased(_Message):
    """Booking service -> discount worker: give back the unit held for this booking.

    ``resultId`` names the result that granted the unit (the booking service
    has it from that result): the worker gives the unit back only when it is
    the result it stored for the booking, so a release cannot be forged by
    someone who never saw the result. ``day`` is the quota day the result
    named. Releasing is idempotent: a unit is given back at most once whatever
    the deliveries.
    """

    booking_id: uuid.UUID = Field(alias="bookingId")
    day: dt.date | None = None
    reason: ReleaseReason
    result_id: uuid.UUID | None = Field(default=None, alias="resultId")


EVENT_MODELS: Final[dict[Event, type[_Message]]] = {
    Event.BOOKING_CREATED: BookingCreated,
    Event.DISCOUNT_PROCESSED: DiscountProcessed,
    Event.QUOTA_RELEASED: QuotaReleased,
}


class MalformedMessage(ValueError):
    """A message that can never be processed: unknown type, bad JSON, bad fields."""


def encode(message: _Message) -> bytes:
    return message.model_dump_json(by_alias=True).encode()


def decode(event_type: str | None, body: bytes) -> _Message:
    """Parse a message body for its event type, or raise :class:`MalformedMessage`."""
    try:
        event = Event(event_type or "")
    except ValueError:
        raise MalformedMessage(f"unknown event type {event_type!r}") from None
    try:
        return EVENT_MODELS[event].model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise MalformedMessage(f"invalid {event.value} message: {problems}") from None


def is_trace_id(value: Any) -> bool:
    """A W3C trace id: 32 lowercase hex digits, not all zero."""
    return (
        isinstance(value, str)
        and len(value) == 32
        and all(c in "0123456789abcdef" for c in value)
        and value != "0" * 32
    )
