"""`medbook dlq`: list without consuming, show, replay a dead letter to completion, purge."""

from __future__ import annotations

import json

import aio_pika
import pytest

from medbook import contracts
from medbook.discount import rules
from tests.cli.conftest import Medbook, explain
from tests.helpers import Stack, eligible_body, eventually


async def dlq_count(stack: Stack, queue: str = contracts.DISCOUNT_QUEUE) -> int:
    connection = await aio_pika.connect(stack.infra.amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(contracts.dead_letter_queue(queue), passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_a_dead_lettered_booking_is_listed_shown_and_replayed_to_completion(
    medbook: Medbook, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decide = rules.decide

    def broken(booking, policy, today):  # a bug that hits one customer
        if booking.user_name == "Poison Pill":
            raise RuntimeError("rule engine exploded")
        return real_decide(booking, policy, today)

    monkeypatch.setattr(rules, "decide", broken)
    poisoned = (await stack.book(eligible_body(name="Poison Pill"))).json()["bookingId"]
    await eventually(lambda: dlq_count(stack), lambda n: n == 1, what="the dead letter")

    for _ in range(2):  # listing consumes nothing
        result = await medbook("dlq", "list", "--json")
        assert result.exit_code == 0, explain(result)
        listed = {q["queue"]: q for q in json.loads(result.stdout)}
        assert listed["booking_queue.dlq"]["count"] == 0
        (letter,) = listed["discount_queue.dlq"]["messages"]
        assert letter["reason"] == "RuntimeError: rule engine exploded"
        assert (letter["type"], letter["booking_id"], letter["tries"]) == (
            "booking_created", poisoned, 3
        )  # fmt: skip
        assert await dlq_count(stack) == 1

    result = await medbook("dlq", "list")
    assert result.exit_code == 0, explain(result)
    assert "discount_queue.dlq: 1 message(s)" in result.stdout
    assert "booking_queue.dlq: empty" in result.stdout
    assert letter["ref"] in result.stdout

    result = await medbook("dlq", "show", poisoned)
    assert result.exit_code == 0, explain(result)
    assert "reason         RuntimeError: rule engine exploded" in result.stdout
    assert f'"bookingId": "{poisoned}"' in result.stdout
    assert "x-medbook-tries: 3" in result.stdout

    monkeypatch.setattr(rules, "decide", real_decide)  # the fix
    result = await medbook("dlq", "replay", letter["ref"])
    assert result.exit_code == 0, explain(result)
    assert "replayed 1 message(s) (discount_queue.dlq: 1)" in result.stdout
    booking = await stack.wait_terminal(poisoned)
    assert booking["status"] == "CONFIRMED" and booking["finalPrice"] == 396
    assert await dlq_count(stack) == 0

    result = await medbook("dlq", "show", poisoned)
    assert result.exit_code == 1 and "no dead letter matches" in result.stderr


async def test_many_dead_letters_are_counted_by_reason_refused_when_unroutable_and_purged(
    medbook: Medbook, stack: Stack
) -> None:
    connection = await aio_pika.connect(stack.infra.amqp_url)
    try:
        channel = await connection.channel()
        dlx = await channel.get_exchange(contracts.DEAD_LETTER_EXCHANGE)
        for i in range(300):
            await dlx.publish(
                aio_pika.Message(
                    b"{not json",
                    type="booking_created",
                    message_id=f"m{i}",
                    headers={
                        contracts.DEAD_LETTER_REASON_HEADER: "invalid booking_created message"
                    },
                ),
                routing_key=contracts.DISCOUNT_QUEUE,
            )
        await dlx.publish(  # no event type: nothing to route it by
            aio_pika.Message(b"{}", message_id="untyped"), routing_key=contracts.DISCOUNT_QUEUE
        )
        await dlx.publish(  # dead-lettered by the broker itself
            aio_pika.Message(
                b"{}",
                type="discount_processed",
                message_id="crashed",
                headers={
                    "x-death": [{"reason": "delivery_limit", "queue": "booking_queue", "count": 1}],
                    "x-delivery-count": 20,
                },
            ),
            routing_key=contracts.BOOKING_QUEUE,
        )
    finally:
        await connection.close()

    result = await medbook("dlq", "list", "--limit", "3", "--json")
    assert result.exit_code == 0, explain(result)
    listed = {q["queue"]: q for q in json.loads(result.stdout)}
    discount = listed["discount_queue.dlq"]
    assert discount["count"] == 301 and len(discount["messages"]) == 3
    assert discount["by_reason"] == {"invalid booking_created message": 300, "unknown": 1}
    assert [m["message_id"] for m in discount["messages"]] == ["m0", "m1", "m2"]  # in order
    (crashed,) = listed["booking_queue.dlq"]["messages"]
    assert crashed["reason"].startswith("broker: delivery_limit")
    assert (crashed["original_queue"], crashed["tries"]) == ("booking_queue", 20)

    result = await medbook("dlq", "replay", "untyped", "--queue", "discount")
    assert result.exit_code == 1, explain(result)
    assert "event type None cannot be routed" in result.stdout
    assert await dlq_count(stack) == 301

    result = await medbook("dlq", "purge", "--all", input="n\n")
    assert result.exit_code == 1 and "nothing changed" in result.stderr
    assert await dlq_count(stack) == 301

    result = await medbook("dlq", "purge", "m7", "m8", "--yes")
    assert result.exit_code == 0, explain(result)
    assert "deleted 2 message(s) (discount_queue.dlq: 2)" in result.stdout
    assert await dlq_count(stack) == 299

    result = await medbook("dlq", "purge", "--all", "--yes")
    assert result.exit_code == 0, explain(result)
    assert "deleted 300 message(s) (discount_queue.dlq: 299, booking_queue.dlq: 1)" in result.stdout
    assert await dlq_count(stack) == 0
    assert await dlq_count(stack, contracts.BOOKING_QUEUE) == 0
