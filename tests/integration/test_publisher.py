"""The services' Publisher against a real RabbitMQ: concurrent publishes do not queue
behind each other's socket writes, keep their order, and every publish still returns
only once the broker confirmed it (an unroutable one and a refused one raise)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest

from medbook.broker_connection import connect_robust_any
from medbook.failures import DependencyUnavailable
from medbook.messaging import Publisher, queue_arguments
from tests.helpers import Infra


@pytest.fixture
async def connection(infra: Infra) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(infra.amqp_url)
    yield connection
    await connection.close()


@pytest.fixture
async def publisher(connection) -> AsyncIterator[Publisher]:
    publisher = Publisher(connection)
    await publisher.start()
    yield publisher
    await publisher.close()


async def _queue(connection, **arguments: object) -> str:
    """A quorum queue as the services' (``arguments`` instead: a classic queue with those)."""
    name = f"publisher-{uuid.uuid4().hex[:8]}"
    channel = await connection.channel()
    await channel.declare_queue(name, durable=True, arguments=arguments or queue_arguments(name))
    await channel.close()
    return name


async def _bodies(connection, name: str, count: int) -> list[bytes]:
    channel = await connection.channel()
    queue = await channel.declare_queue(name, passive=True)
    bodies: list[bytes] = []
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            bodies.append(message.body)
            if len(bodies) == count:
                break
    await channel.close()
    return bodies


async def test_concurrent_publishes_are_queued_in_one_loop_turn(connection, publisher) -> None:
    """Fifty publishes started together all have their frames queued before the first one is
    written: none holds the channel until its frame reached the socket (aio-pika's
    ``Exchange.publish`` did, so they went out one every few loop turns: 1 of 50 queued)."""
    name = await _queue(connection)
    assert publisher.channel is not None
    underlay = await publisher.channel.get_underlay_channel()
    before = underlay.delivery_tag
    publishes = [
        asyncio.create_task(publisher.publish_raw("", name, aio_pika.Message(str(i).encode())))
        for i in range(50)
    ]
    await asyncio.sleep(0)
    assert underlay.delivery_tag - before == 50
    await asyncio.gather(*publishes)
    assert await _bodies(connection, name, 50) == [str(i).encode() for i in range(50)]


async def test_concurrent_publishes_arrive_in_the_order_they_were_made(
    connection, publisher
) -> None:
    name = await _queue(connection)
    await asyncio.gather(
        *(publisher.publish_raw("", name, aio_pika.Message(str(i).encode())) for i in range(300))
    )
    assert await _bodies(connection, name, 300) == [str(i).encode() for i in range(300)]


async def test_an_unroutable_publish_raises_and_is_not_an_outage(publisher) -> None:
    """Mandatory: a publish no queue takes comes back, and that is a bug, not an outage."""
    with pytest.raises(aiormq.exceptions.PublishError):
        await publisher.publish_raw("", f"nowhere-{uuid.uuid4().hex[:8]}", aio_pika.Message(b"x"))


async def test_a_refused_publish_raises_and_the_next_goes_on_a_new_channel(
    connection, publisher
) -> None:
    """A publish the broker nacks (a full queue that rejects publishes) is an outage for the
    caller, which retries; the publisher opens a new channel, on which the next succeeds."""
    name = await _queue(connection, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    await publisher.publish_raw("", name, aio_pika.Message(b"first"))
    first_channel = publisher.channel
    with pytest.raises(DependencyUnavailable):
        await publisher.publish_raw("", name, aio_pika.Message(b"refused"))
    assert publisher.channel is not first_channel
    assert await _bodies(connection, name, 1) == [b"first"]
    await publisher.publish_raw("", name, aio_pika.Message(b"after"))
    assert await _bodies(connection, name, 1) == [b"after"]


async def test_a_publish_cancelled_while_waiting_for_its_confirm_leaves_the_channel_usable(
    connection, publisher
) -> None:
    """Cancelled once its frame is queued, the publish still reaches the broker (a frame is
    never half-sent), and the channel goes on confirming the next ones."""
    name = await _queue(connection)
    pending = asyncio.create_task(publisher.publish_raw("", name, aio_pika.Message(b"gone")))
    await asyncio.sleep(0)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await publisher.publish_raw("", name, aio_pika.Message(b"next"))
    assert await _bodies(connection, name, 2) == [b"gone", b"next"]


async def test_the_frames_of_a_loop_turn_leave_in_one_send(infra: Infra) -> None:
    """The services' connections (``connect_robust_any``) coalesce what aiormq writes in one
    loop turn: a batch of 256 concurrent publishes takes far fewer socket writes than frames
    (one per publish before), and every one is confirmed."""
    connection = await connect_robust_any([infra.amqp_url], name="coalescing-test")
    try:
        name = await _queue(connection)
        publisher = Publisher(connection)
        await publisher.start()
        writer = connection.transport_factory.writer
        assert writer is not None
        writes, sends = writer.writes, writer.sends
        await asyncio.gather(
            *(publisher.publish_raw("", name, aio_pika.Message(b"x")) for _ in range(256))
        )
        assert writer.writes - writes >= 256
        print(f"{writer.writes - writes} frames in {writer.sends - sends} sends")
        assert writer.sends - sends <= (writer.writes - writes) / 4, writer.sends - sends
        assert len(await _bodies(connection, name, 256)) == 256
    finally:
        await connection.close()
