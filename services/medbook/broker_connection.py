"""A broker connection that knows every node of a RabbitMQ cluster, and moves between them.

aio-pika's robust connection re-opens its channels, re-declares what was
declared through them and restores its consumers after a reconnect, but it
only knows one URL: when that node dies, it keeps knocking on the same door.
:class:`MultiNodeConnection` is that robust connection with a list of URLs:
each reconnect attempt goes to the next node in the list (round the ring), so
a connection whose node died is re-made on another node within a reconnect
interval, and everything aio-pika restores is restored there: channels keep
their publisher confirms, consumers their manual acks and prefetch.

What a switch means for messages: a publish in flight on the dead connection
fails (its confirm never comes), so its sender publishes again; deliveries not
yet acked go back to their queue and are delivered again, to this or another
consumer. Both are what the services already handle (the outbox keeps a row
until its confirm; every consumer is idempotent).

The list of URLs comes from broker_address.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError
from pamqp.commands import Basic
from yarl import URL

from medbook.amqp_transport import CoalescingTransportFactory
from medbook.broker_address import BrokerAddressError, broker_urls, masked

log = logging.getLogger(__name__)

__all__ = [
    "BrokerAddressError",
    "MultiNodeConnection",
    "broker_urls",
    "connect_any",
    "connect_robust_any",
    "is_nack",
    "masked",
]

# The robust connection's private method that makes each (re)connection attempt; we
# choose the node before each one. Checked here so that an aio-pika that renamed it
# fails at import, loudly, instead of silently never leaving a dead node.
_CONNECT_TRANSPORT = "_RobustConnection__connect_transport"
if not callable(getattr(RobustConnection, _CONNECT_TRANSPORT, None)):  # pragma: no cover
    raise ImportError(
        f"aio_pika.RobustConnection has no {_CONNECT_TRANSPORT}: this aio-pika version is not "
        "supported by medbook.broker_connection (pinned: aio-pika 10.2)"
    )


def is_nack(exc: BaseException) -> bool:
    """Did the broker refuse a publish (``Basic.Nack``), as opposed to returning it unroutable?

    After a connection moved to another node while a quorum queue was electing
    its leader, RabbitMQ 3.10 can nack every later publish on the channel that
    aio-pika restored (its queue client there still points at the dead leader),
    while a new channel on the same connection publishes fine: a publisher that
    sees a nack opens a new channel (``messaging.Publisher``).
    """
    return isinstance(exc, DeliveryError) and isinstance(exc.frame, Basic.Nack)


def node_label(url: URL) -> str:
    return f"{url.host}:{url.port}"


class MultiNodeConnection(RobustConnection):
    """A robust connection over several nodes: every reconnect attempt tries the next one.

    The query parameters (heartbeat, ...) of the first URL apply to every node.
    """

    def __init__(self, urls: Sequence[URL], *, start: int = 0, **kwargs: Any) -> None:
        if not urls:
            raise BrokerAddressError("no RabbitMQ URL given")
        self._nodes = list(urls)
        self._index = start % len(self._nodes)
        self._attempts = 0
        super().__init__(self._nodes[self._index], **kwargs)
        # Every (re)connection's socket coalesces the frames of a loop turn (amqp_transport).
        self.transport_factory = CoalescingTransportFactory()
        self.kwargs["transport_factory"] = self.transport_factory

    @property
    def node(self) -> str:
        """``host:port`` of the node this connection uses (or tries) now."""
        return node_label(self._nodes[self._index])

    @property
    def nodes(self) -> list[str]:
        return [node_label(url) for url in self._nodes]

    async def _RobustConnection__connect_transport(self) -> None:  # noqa: N802  (aio-pika's name)
        """One connection attempt: the first to the starting node, each later one to the next."""
        if self._attempts and len(self._nodes) > 1:
            self._index = (self._index + 1) % len(self._nodes)
            self.url = self._nodes[self._index]
            log.info("connecting to RabbitMQ node %s", self.node)
        self._attempts += 1
        base = RobustConnection._RobustConnection__connect_transport  # type: ignore[attr-defined]  # aio-pika's name-mangled private method, checked at import
        await base(self)
        if self._attempts > 1:
            log.info("connected to RabbitMQ node %s", self.node)


async def connect_robust_any(
    urls: Sequence[str],
    *,
    name: str,
    connect_timeout: float = 5.0,
    reconnect_interval: float = 1.0,
) -> MultiNodeConnection:
    """A :class:`MultiNodeConnection`, made on the first node (in list order) that answers.

    Raises the last node's error when none does (the caller decides whether to
    wait and try again).
    """
    if not urls:
        raise BrokerAddressError("no RabbitMQ URL given")
    nodes = [make_url(url, reconnect_interval=reconnect_interval) for url in urls]
    last: BaseException | None = None
    for start in range(len(nodes)):
        connection = MultiNodeConnection(
            nodes, start=start, client_properties={"connection_name": name}
        )
        try:
            await connection.connect(timeout=connect_timeout)
        except CONNECTION_EXCEPTIONS as exc:
            last = exc
            log.info("RabbitMQ node %s not reachable: %r", node_label(nodes[start]), exc)
            with contextlib.suppress(Exception):
                await connection.close()
            continue
        log.info("connected to RabbitMQ node %s (of %d)", connection.node, len(nodes))
        return connection
    assert last is not None
    raise last


async def connect_any(
    urls: Sequence[str], *, name: str, connect_timeout: float = 5.0
) -> AbstractConnection:
    """A plain (not robust) connection to the first node that answers, for short jobs."""
    if not urls:
        raise BrokerAddressError("no RabbitMQ URL given")
    last: BaseException | None = None
    for url in urls:
        try:
            return await aio_pika.connect(
                url, timeout=connect_timeout, client_properties={"connection_name": name}
            )
        except CONNECTION_EXCEPTIONS as exc:
            last = exc
            log.info("RabbitMQ node %s not reachable: %r", masked(url), exc)
    assert last is not None
    raise last
