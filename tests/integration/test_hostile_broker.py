"""The broker as a trust boundary: messages from anyone who can publish to the queues.

Forged results cannot rewrite a booking that has its result, a booking_created
for a booking that does not exist cannot keep a quota unit, and a forged
quota_released cannot take back a discount a booking still holds. Every
message here is published with a real AMQP client, as an attacker would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from medbook import contracts, metrics
from medbook.contracts import (
    BookingCreated,
    BookingStatus,
    DiscountProcessed,
    Event,
    Gender,
    QuotaReleased,
    ReleaseReason,
    ServiceItem,
)
from medbook.discount.quota import counter_key, members_key
from tests.helpers import Stack, booking_body, eligible_body, eventually, today
from tests.integration.test_dead_letters import next_dead_letter


@pytest.fixture
async def exchange(stack: Stack) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    """The saga's exchange, reached with an AMQP connection of the attacker's own."""
    connection = await aio_pika.connect(stack.infra.amqp_url)
    channel = await connection.channel()
    yield await channel.get_exchange(contracts.EXCHANGE)
    await connection.close()


async def forge(exchange: aio_pika.abc.AbstractExchange, event: Event, message) -> None:
    await exchange.publish(
        aio_pika.Message(
            contracts.encode(message),
            type=event.value,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={contracts.CONTRACT_VERSION_HEADER: contracts.CONTRACT_VERSION},
        ),
        routing_key=event.value,
    )


async def used(stack: Stack) -> int:
    return int(await stack.redis.get(counter_key(today())) or 0)


async def holders(stack: Stack) -> int:
    return int(await stack.redis.scard(members_key(today())))


def counter(registry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def forged_result(booking_id: uuid.UUID, **fields) -> DiscountProcessed:
    values = {
        "booking_id": booking_id,
        "result_id": uuid.uuid4(),
        "is_allowed": True,
        "status": BookingStatus.CONFIRMED,
        "final_price": 1,
        "quota_day": today(),
        "trace_id": "f" * 32,
        "processed_at": dt.datetime.now(dt.UTC),
    }
    values.update(fields)
    return DiscountProcessed(**values)


async def queue_drained(stack: Stack, queue: str) -> None:
    async def depth() -> int:
        connection = await aio_pika.connect(stack.infra.amqp_url)
        try:
            declared = await (await connection.channel()).declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await connection.close()

    await eventually(depth, lambda n: n == 0, what=f"{queue} drained")
    await asyncio.sleep(0.3)  # the last delivery's handler has finished


# -- results ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", [BookingStatus.CONFIRMED, BookingStatus.REJECTED], ids=["confirmed", "rejected"]
)
async def test_a_forged_result_for_a_final_booking_leaves_it_exactly_as_it_was(
    stack: Stack, exchange, status: BookingStatus
) -> None:
    name = "fail_test_user" if status is BookingStatus.REJECTED else "Plain Customer"
    created = (await stack.book(booking_body(userName=name))).json()
    before = await stack.wait_terminal(created["bookingId"])
    assert before["status"] == status.value
    seen = counter(metrics.BOOKING, "medbook_conflicting_results_total")
    await forge(exchange, Event.DISCOUNT_PROCESSED, forged_result(uuid.UUID(created["bookingId"])))
    await eventually(
        lambda: asyncio.sleep(0, counter(metrics.BOOKING, "medbook_conflicting_results_total")),
        lambda n: n == seen + 1,
        what="the forged result counted",
    )
    await queue_drained(stack, contracts.DISCOUNT_QUEUE)
    assert (
        await stack.get(created["bookingId"]) == before
    )  # history, price, times: all as they were
    outbox = await stack.booking.db.fetch_val(
        "SELECT count(*) FROM outbox WHERE event = 'quota_released'"
    )
    assert outbox == 0


async def test_the_genuine_result_is_not_displaced_by_a_forged_one(stack: Stack, exchange) -> None:
    """A forgery first, then the genuine result delivered again: the genuine one is a repeat."""
    created = (await stack.book(eligible_body())).json()
    before = await stack.wait_terminal(created["bookingId"])
    booking_id = uuid.UUID(created["bookingId"])
    await forge(exchange, Event.DISCOUNT_PROCESSED, forged_result(booking_id))
    # The genuine result delivered again (as a redelivery would bring it).
    stored = await stack.redis.hget(f"discount_processed:{booking_id}", "result")
    genuine = DiscountProcessed.model_validate_json(stored)
    await forge(exchange, Event.DISCOUNT_PROCESSED, genuine)
    await queue_drained(stack, contracts.BOOKING_QUEUE)
    after = await stack.get(created["bookingId"])
    assert after == before
    assert not any("Late discount result" in line for line in after["history"])
    assert await used(stack) == 1


async def test_a_booking_created_for_no_booking_gives_its_unit_back(stack: Stack, exchange) -> None:
    ghost = uuid.uuid4()
    await forge(
        exchange,
        Event.BOOKING_CREATED,
        BookingCreated(
            booking_id=ghost,
            user_id="ghost",
            user_name="Ghost",
            gender=Gender.FEMALE,
            dob=dt.date.fromisoformat(eligible_body()["dob"]),
            services=(ServiceItem(name="Blood Test", price=300),),
            base_price=300,
            trace_id="e" * 32,
            created_at=dt.datetime.now(dt.UTC),
        ),
    )
    connection = await aio_pika.connect(stack.infra.amqp_url)
    channel = await connection.channel()
    dead = await next_dead_letter(channel, contracts.BOOKING_QUEUE)  # kept for inspection
    await connection.close()
    assert "unknown booking" in dead.headers[contracts.DEAD_LETTER_REASON_HEADER]
    await eventually(lambda: used(stack), lambda n: n == 0, what="the ghost's unit back")
    assert await holders(stack) == 0
    # The quota is whole again: the next eligible booking gets its discount.
    real = (await stack.book(eligible_body())).json()
    assert (await stack.wait_terminal(real["bookingId"]))["finalPrice"] == 396


# -- releases --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_a_wrong_result_id", [False, True], ids=["no-id", "wrong-id"])
async def test_a_forged_release_never_takes_back_a_discount_that_is_held(
    stack: Stack, exchange, with_a_wrong_result_id: bool
) -> None:
    created = (await stack.book(eligible_body())).json()
    booking = await stack.wait_terminal(created["bookingId"])
    assert booking["finalPrice"] == 396
    assert await used(stack) == 1
    refused = counter(metrics.DISCOUNT, "medbook_quota_releases_refused_total")
    forged = QuotaReleased(
        booking_id=uuid.UUID(created["bookingId"]),
        day=today(),
        reason=ReleaseReason.CANCELLED,
        result_id=uuid.uuid4() if with_a_wrong_result_id else None,
    )
    await forge(exchange, Event.QUOTA_RELEASED, forged)
    await eventually(
        lambda: asyncio.sleep(0, counter(metrics.DISCOUNT, "medbook_quota_releases_refused_total")),
        lambda n: n == refused + 1,
        what="the forged release refused",
    )
    assert await used(stack) == 1
    assert await holders(stack) == 1
    # The booking's own cancel still gives the unit back.
    assert (await stack.api.post(f"/booking/{created['bookingId']}/cancel")).status_code == 200
    await eventually(lambda: used(stack), lambda n: n == 0, what="the cancel's release")
