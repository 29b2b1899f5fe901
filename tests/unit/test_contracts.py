"""The wire contract: event routing, round trips, malformed messages."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from medbook import contracts
from medbook.contracts import (
    BookingCreated,
    BookingStatus,
    DiscountProcessed,
    Event,
    MalformedMessage,
    QuotaReleased,
    ReleaseReason,
    SagaState,
    SagaStep,
)


def test_every_event_has_a_queue_and_a_model() -> None:
    assert set(contracts.EVENT_QUEUE) == set(Event) == set(contracts.EVENT_MODELS)
    assert contracts.EVENT_QUEUE[Event.BOOKING_CREATED] == "discount_queue"
    assert contracts.EVENT_QUEUE[Event.DISCOUNT_PROCESSED] == "booking_queue"


def test_booking_created_round_trip_uses_the_reference_field_names() -> None:
    event = BookingCreated(
        booking_id=uuid.uuid4(),
        user_id="u",
        user_name="Asha",
        gender="Female",
        dob=dt.date(1990, 1, 2),
        services=[{"name": "Blood Test", "price": 300}],
        base_price=300,
        trace_id="ab" * 16,
        created_at=dt.datetime.now(dt.UTC),
    )
    raw = contracts.encode(event)
    for field in (b'"bookingId"', b'"userId"', b'"userName"', b'"basePrice"', b'"traceId"'):
        assert field in raw
    assert contracts.decode("booking_created", raw) == event


def test_discount_processed_carries_steps_and_quota_day() -> None:
    now = dt.datetime.now(dt.UTC)
    result = DiscountProcessed(
        booking_id=uuid.uuid4(),
        result_id=uuid.uuid4(),
        is_allowed=True,
        status=BookingStatus.CONFIRMED,
        final_price=396,
        quota_day=dt.date(2026, 5, 17),
        trace_id="c" * 32,
        processed_at=now,
        steps=[SagaStep(state=SagaState.CHECKING_QUOTA, message="m", at=now)],
    )
    decoded = contracts.decode("discount_processed", contracts.encode(result))
    assert decoded == result
    assert b'"quotaDay":"2026-05-17"' in contracts.encode(result)


@pytest.mark.parametrize(
    ("event_type", "body", "problem"),
    [
        ("no_such_event", b"{}", "unknown event type"),
        (None, b"{}", "unknown event type"),
        ("booking_created", b"not json", "invalid booking_created"),
        ("quota_released", b'{"bookingId": "nope", "reason": "cancelled"}', "bookingId"),
        (
            "quota_released",
            b'{"bookingId": "%s", "reason": "why not"}' % str(uuid.uuid4()).encode(),
            "reason",
        ),
    ],
)
def test_malformed_messages_are_named_as_such(
    event_type: str | None, body: bytes, problem: str
) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        contracts.decode(event_type, body)


def test_quota_released_day_is_optional() -> None:
    message = QuotaReleased(booking_id=uuid.uuid4(), reason=ReleaseReason.SWEPT)
    assert contracts.decode("quota_released", contracts.encode(message)) == message


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0af7651916cd43dd8448eb211c80319c", True),
        ("0" * 32, False),
        ("0AF7" * 8, False),
        ("abc", False),
    ],
)
def test_trace_id_shape(value: str, valid: bool) -> None:
    assert contracts.is_trace_id(value) is valid
