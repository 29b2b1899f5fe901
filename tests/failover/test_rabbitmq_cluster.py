"""RabbitMQ, 3 nodes: lose the node that leads the queues, then another, then bring them back.

The services are given every node's URL; their connections move to a live
node when theirs dies, with publisher confirms and manual acks as before.
Quorum queues have a replica on each node: with one node gone a new leader
takes over; with two gone the queues wait (no majority) until one is back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import aiormq
import pytest

from medbook.broker_connection import MultiNodeConnection, broker_urls, connect_robust_any
from medbook.contracts import BOOKING_QUEUE, DISCOUNT_QUEUE
from medbook.devstack.clusters import RabbitMQCluster, _in_parallel
from medbook.devstack.servers import RabbitMQServer
from tests.failover.conftest import DRILL_LIMIT, HaBackends
from tests.failover.drill import Drill
from tests.helpers import Infra, ProcessServices, eventually

pytestmark = [pytest.mark.failover, pytest.mark.slow]


async def test_quorum_queues_have_a_replica_on_every_node(
    ha_backends: HaBackends, ha_services: ProcessServices
) -> None:
    cluster = ha_backends.rabbit
    await asyncio.to_thread(cluster.wait_queues_replicated, [DISCOUNT_QUEUE, BOOKING_QUEUE])
    queues = await asyncio.to_thread(cluster.queues)
    for name in (DISCOUNT_QUEUE, BOOKING_QUEUE):
        assert queues[name]["type"] == "quorum"
        assert set(queues[name]["members"]) == {node.nodename for node in cluster.nodes}


async def test_connection_moves_to_a_live_node_and_keeps_confirms_and_acks(
    ha_backends: HaBackends, ha_infra: Infra
) -> None:
    cluster = ha_backends.rabbit
    # A dead address first: the first node that answers is used.
    urls = ["amqp://guest:guest@127.0.0.1:1/", *broker_urls(cluster.url)]
    connection = await connect_robust_any(urls, name="failover-test", reconnect_interval=0.2)
    assert isinstance(connection, MultiNodeConnection)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            "ha-probe", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.set_qos(prefetch_count=10)
        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        acked: list[bytes] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.body.startswith(b"before") and not message.redelivered:
                held.append(message)  # never acked on this connection
                return
            acked.append(message.body)
            await message.ack()

        await queue.consume(on_message)
        for i in range(5):
            await channel.default_exchange.publish(
                aio_pika.Message(b"before-%d" % i, delivery_mode=2), routing_key="ha-probe"
            )
        await eventually(lambda: asyncio.sleep(0, len(held)), lambda n: n == 5, what="deliveries")
        victim = next(n for n in cluster.nodes if f"127.0.0.1:{n.port}" == connection.node)
        await asyncio.to_thread(cluster.kill, victim)
        await eventually(
            lambda: asyncio.sleep(0, connection.connected.is_set() and connection.node),
            lambda node: bool(node) and node != f"127.0.0.1:{victim.port}",
            timeout=30,
            what="reconnected to another node",
        )
        for i in range(5):  # confirms still come after the switch
            await _publish_confirmed(connection, b"after-%d" % i)
        expected = {b"before-%d" % i for i in range(5)} | {b"after-%d" % i for i in range(5)}
        await eventually(
            lambda: asyncio.sleep(0, set(acked)),
            lambda got: got == expected,
            timeout=30,
            what="unacked messages redelivered and new ones consumed",
        )
        await channel.queue_delete("ha-probe")
    finally:
        await connection.close()
    # The node comes back before the next test (ha_infra heals what is down).


async def _publish_confirmed(connection: MultiNodeConnection, body: bytes) -> None:
    """Publish with a confirm, as medbook's Publisher does: while the quorum queue elects a
    leader the broker nacks (a publisher retries), and RabbitMQ 3.10 may keep nacking a
    channel restored across the election, so a nack moves the publish to a new channel."""
    deadline = asyncio.get_running_loop().time() + 30
    channel = await connection.channel(publisher_confirms=True)
    while True:
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=2), routing_key="ha-probe", timeout=15
            )
            return
        except aiormq.exceptions.DeliveryError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
            channel = await connection.channel(publisher_confirms=True)


async def test_drill_leader_killed_then_another_then_both_back(
    ha_backends: HaBackends, ha_infra: Infra, ha_services: ProcessServices, tmp_path: Path
) -> None:
    cluster = ha_backends.rabbit
    # Asked before the load (rabbitmqctl takes a second or two): the fault itself is quick.
    first = await asyncio.to_thread(cluster.queue_leader, DISCOUNT_QUEUE)
    leads = [q for q in (DISCOUNT_QUEUE, BOOKING_QUEUE) if await _leads(cluster, q, first)]

    async def fault(drill: Drill) -> None:
        drill.note(f"SIGKILL {first.nodename.split('@')[0]} (leader of {', '.join(leads)})")
        await asyncio.to_thread(cluster.kill, first)
        await drill.wait_progress(30)
        drill.note("saga moving again on the two nodes left")
        second = await asyncio.to_thread(cluster.queue_leader, DISCOUNT_QUEUE)
        drill.note(f"SIGKILL {second.nodename.split('@')[0]} (the new leader): no majority left")
        await asyncio.to_thread(cluster.kill, second)
        await asyncio.sleep(3)
        drill.note("restarting both nodes")
        await asyncio.to_thread(_in_parallel, [first.start, second.start])
        await asyncio.to_thread(cluster.wait_members_running)
        drill.note("both nodes back in the cluster")

    drill = Drill("rabbitmq: queue leader killed, then another", ha_infra, ha_services,
                  limit=DRILL_LIMIT, out_dir=tmp_path)  # fmt: skip
    await drill.run(fault, fault_after=300)
    report = await drill.verify()
    assert not report.problems, report.render()


async def _leads(cluster: RabbitMQCluster, queue: str, node: RabbitMQServer) -> bool:
    return await asyncio.to_thread(cluster.queue_leader, queue) is node
