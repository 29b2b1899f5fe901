"""Dead letters: malformed messages go at once, failing ones after the bounded tries; consumers live on."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from medbook import contracts
from medbook.contracts import BookingStatus, DiscountProcessed, Event
from medbook.discount import rules
from tests.helpers import Stack, eligible_body, eventually


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(stack.infra.amqp_url)
    yield await connection.channel()
    await connection.close()


async def next_dead_letter(
    channel: aio_pika.abc.AbstractChannel, queue: str
) -> aio_pika.abc.AbstractIncomingMessage:
    dlq = await channel.get_queue(contracts.dead_letter_queue(queue))
    message = await eventually(
        lambda: dlq.get(fail=False, no_ack=True),
        lambda m: m is not None,
        what=f"a dead letter on {queue}",
    )
    assert message is not None
    return message


async def test_malformed_message_is_dead_lettered_at_once_with_its_reason(
    stack: Stack, channel
) -> None:
    assert stack.worker is not None and stack.worker.publisher is not None
    await stack.worker.publisher.publish(Event.BOOKING_CREATED, b"{not json")
    message = await next_dead_letter(channel, contracts.DISCOUNT_QUEUE)
    assert message.headers[contracts.DEAD_LETTER_REASON_HEADER].startswith(
        "invalid booking_created"
    )
    assert message.headers[contracts.DEAD_LETTER_TRIES_HEADER] == 1
    assert message.headers[contracts.DEAD_LETTER_QUEUE_HEADER] == contracts.DISCOUNT_QUEUE
    assert message.body == b"{not json"  # kept as it was, for inspection and replay
    booking = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
    assert booking["status"] == "CONFIRMED"  # the consumer is alive


async def test_unknown_event_type_is_dead_lettered(stack: Stack, channel) -> None:
    exchange = await channel.get_exchange(contracts.EXCHANGE)
    await exchange.publish(
        aio_pika.Message(b"{}", type="mystery"), routing_key=Event.BOOKING_CREATED.value
    )
    message = await next_dead_letter(channel, contracts.DISCOUNT_QUEUE)
    assert "unknown event type 'mystery'" in message.headers[contracts.DEAD_LETTER_REASON_HEADER]


async def test_failing_message_is_dead_lettered_after_the_bounded_tries(
    stack: Stack, channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decide = rules.decide

    def broken(booking, policy, today):  # a bug that hits one customer only
        if booking.user_name == "Poison Pill":
            raise RuntimeError("rule engine exploded")
        return real_decide(booking, policy, today)

    monkeypatch.setattr(rules, "decide", broken)
    poisoned = (await stack.book(eligible_body(name="Poison Pill"))).json()["bookingId"]
    message = await next_dead_letter(channel, contracts.DISCOUNT_QUEUE)
    assert (
        message.headers[contracts.DEAD_LETTER_REASON_HEADER] == "RuntimeError: rule engine exploded"
    )
    assert message.headers[contracts.DEAD_LETTER_TRIES_HEADER] == 3  # max_tries in the tests
    assert contracts.decode(message.type, message.body).booking_id == uuid.UUID(poisoned)
    healthy = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
    assert healthy["status"] == "CONFIRMED"
    assert (await stack.get(poisoned))["status"] == "PENDING"  # the sweep will reject it


async def test_result_for_an_unknown_booking_is_dead_lettered(stack: Stack, channel) -> None:
    assert stack.worker is not None and stack.worker.publisher is not None
    now = dt.datetime.now(dt.UTC)
    orphan = DiscountProcessed(
        booking_id=uuid.uuid4(),
        result_id=uuid.uuid4(),
        is_allowed=True,
        status=BookingStatus.CONFIRMED,
        final_price=100,
        trace_id="ab" * 16,
        processed_at=now,
    )
    await stack.worker.publisher.publish(Event.DISCOUNT_PROCESSED, contracts.encode(orphan))
    message = await next_dead_letter(channel, contracts.BOOKING_QUEUE)
    assert "unknown booking" in message.headers[contracts.DEAD_LETTER_REASON_HEADER]
