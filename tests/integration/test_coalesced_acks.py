"""Acks that share a frame (acks.py) against a real RabbitMQ: messages finished together
are acked in one ``multiple=True`` frame, and that frame never settles a message still in
flight or one sent back.

What the broker settled is read from the broker itself: once the consumer's channel
closes, every delivery it did not ack returns to the queue, so the queue's depth is
the number of deliveries left unacked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from medbook.acks import AckCoalescer
from medbook.config import RabbitSettings
from medbook.messaging import Consumer, Publisher, queue_arguments
from tests.helpers import Infra, eventually


@pytest.fixture
async def connection(infra: Infra) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(infra.amqp_url)
    yield connection
    await connection.close()


async def _queue(connection: aio_pika.abc.AbstractRobustConnection, count: int) -> str:
    name = f"acks-{uuid.uuid4().hex[:8]}"
    channel = await connection.channel()
    await channel.declare_queue(name, durable=True, arguments=queue_arguments(name))
    for i in range(count):
        await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=name)
    await channel.close()
    return name


async def _depth(
    connection: aio_pika.abc.AbstractRobustConnection, name: str, settle: float = 1.5
) -> int:
    """The queue's depth once the broker took back what the closed channel left unacked.

    A quorum queue takes the deliveries of a closed channel back asynchronously, so a read
    right after the close can come too early (CI saw 0 where 1 came back a moment later).
    Nothing consumes the queue any more, so its depth only grows: it is read for ``settle``
    seconds and the largest reading is the answer (an early read can never hide one that
    was left unacked).
    """
    channel = await connection.channel()
    deadline = asyncio.get_running_loop().time() + settle
    depth = 0
    while True:
        queue = await channel.declare_queue(name, passive=True)
        assert queue.declaration_result.message_count is not None
        depth = max(depth, queue.declaration_result.message_count)
        if asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.1)
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()
    return depth


async def _consume(
    connection: aio_pika.abc.AbstractRobustConnection,
    name: str,
    coalescer: AckCoalescer,
    handle: object,
    *,
    prefetch: int,
) -> aio_pika.abc.AbstractChannel:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(name, passive=True)

    async def on_message(message: AbstractIncomingMessage) -> None:
        coalescer.received(message)
        await handle(message)  # type: ignore[operator]

    await queue.consume(on_message)
    return channel


async def test_messages_finished_together_share_one_ack_frame(connection) -> None:
    name = await _queue(connection, 50)
    coalescer = AckCoalescer()
    gate = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        await gate.wait()  # all finish in the same loop turn
        await coalescer.ack(message)

    channel = await _consume(connection, name, coalescer, handle, prefetch=50)
    await eventually(lambda: _delivered(coalescer), lambda n: n == 50, what="50 deliveries")
    gate.set()
    await eventually(lambda: _acked(coalescer), lambda n: n == 50, what="50 acks")
    assert coalescer.frames_sent < 5  # (one, unless the deliveries arrived in two reads)
    await channel.close()
    assert await _depth(connection, name) == 0


async def test_a_message_in_flight_is_never_covered_by_a_multiple_ack(connection) -> None:
    """The oldest delivery is still being handled while the nine behind it finish: they are
    acked (on their own, never held behind it) and it is not."""
    name = await _queue(connection, 10)
    coalescer = AckCoalescer()
    head_release = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        if message.body == b"0":
            await head_release.wait()
        await coalescer.ack(message)

    channel = await _consume(connection, name, coalescer, handle, prefetch=10)
    await eventually(lambda: _acked(coalescer), lambda n: n == 9, what="nine acks")
    await asyncio.sleep(0.2)
    await channel.close()  # the head was never acked: it goes back to the queue
    assert await _depth(connection, name) == 1


async def test_a_message_sent_back_is_not_acked_by_its_neighbours(connection) -> None:
    """A nack in the middle of a run: the run's multiple ack must not reach back over it
    before it is sent (it is requeued, and still in the queue afterwards)."""
    name = await _queue(connection, 20)
    coalescer = AckCoalescer()
    gate = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        await gate.wait()
        if message.body == b"5":
            async with coalescer.settling(message):
                await message.reject(requeue=False)  # dropped: must not come back acked
            return
        await coalescer.ack(message)

    channel = await _consume(connection, name, coalescer, handle, prefetch=20)
    await eventually(lambda: _delivered(coalescer), lambda n: n == 20, what="20 deliveries")
    gate.set()
    await eventually(lambda: _acked(coalescer), lambda n: n == 19, what="19 acks")
    await channel.close()
    assert await _depth(connection, name) == 0  # 19 acked, 1 rejected, none redelivered


async def test_the_consumer_acks_a_burst_in_few_frames_and_loses_nothing(
    infra: Infra, connection
) -> None:
    """The services' Consumer: a burst of 200 messages, all handled and acked, in far fewer
    ack frames than messages."""
    name = await _queue(connection, 0)
    handled: list[bytes] = []
    rabbit = RabbitSettings(url=infra.amqp_url, prefetch=64)
    publisher = Publisher(connection)
    await publisher.start()

    async def handle(message: AbstractIncomingMessage) -> None:
        await asyncio.sleep(0)
        handled.append(message.body)

    consumer = Consumer(
        connection, name, handle, publisher=publisher, prefetch=rabbit.prefetch, max_tries=3
    )
    channel = await connection.channel()
    for i in range(200):
        await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=name)
    await consumer.start()
    await eventually(lambda: _acked(consumer.acks), lambda n: n == 200, what="200 acks")
    assert sorted(handled, key=int) == [str(i).encode() for i in range(200)]
    assert consumer.acks.frames_sent < 200 / 2, consumer.acks.frames_sent
    await consumer.stop(grace=1)
    await publisher.close()
    await channel.close()
    assert await _depth(connection, name) == 0


async def _delivered(coalescer: AckCoalescer) -> int:
    return sum(len(w.deliveries) for w in coalescer._windows.values())


async def _acked(coalescer: AckCoalescer) -> int:
    return coalescer.acks
