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

Addresses (``MEDBOOK_RABBITMQ_URL``) are one URL, a comma-separated list of
URLs, or one URL naming several hosts (``amqp://user:pass@h1:5672,h2:5672/vhost``,
the form PostgreSQL and MongoDB use), which is expanded to one URL per host
with the same credentials, virtual host and parameters.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

log = logging.getLogger(__name__)

_SCHEMES = ("amqp", "amqps")
# A list separator is a comma (or white space) followed by the next URL's scheme:
# a comma inside a password or a host list is not one.
_LIST_SEPARATOR = re.compile(r"\s*,\s*(?=amqps?://)|\s+(?=amqps?://)", re.IGNORECASE)

# The robust connection's private method that makes each (re)connection attempt; we
# choose the node before each one. Checked here so that an aio-pika that renamed it
# fails at import, loudly, instead of silently never leaving a dead node.
_CONNECT_TRANSPORT = "_RobustConnection__connect_transport"
if not callable(getattr(RobustConnection, _CONNECT_TRANSPORT, None)):  # pragma: no cover
    raise ImportError(
        f"aio_pika.RobustConnection has no {_CONNECT_TRANSPORT}: this aio-pika version is not "
        "supported by medbook.broker_connection (pinned: aio-pika 10.2)"
    )


class BrokerAddressError(ValueError):
    """The broker address setting cannot be used (the message says why, without secrets)."""


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()


def broker_urls(value: str) -> tuple[str, ...]:
    """Every node's AMQP URL in ``value``, in order, each once.

    >>> broker_urls("amqp://u:p@a:5672,b:5673/v")
    ('amqp://u:p@a:5672/v', 'amqp://u:p@b:5673/v')
    """
    text = value.strip()
    if not text:
        raise BrokerAddressError("no RabbitMQ URL given")
    urls: list[str] = []
    for part in _LIST_SEPARATOR.split(text):
        for url in _expand_hosts(part.strip().rstrip(",")):
            if url not in urls:
                urls.append(url)
    return tuple(urls)


def _expand_hosts(url: str) -> list[str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise BrokerAddressError(
            f"not an AMQP URL: {masked(url)!r} (expected amqp://user:password@host:port/vhost; "
            "several nodes as a comma-separated list)"
        )
    netloc, slash, tail = rest.partition("/")
    query_start = netloc.find("?")
    if query_start >= 0:  # amqp://host?heartbeat=5: no path, a query
        netloc, tail, slash = netloc[:query_start], netloc[query_start:], ""
    userinfo, at, hosts = netloc.rpartition("@")
    prefix = f"{scheme}://{userinfo}{at}"
    suffix = f"{slash}{tail}"
    names = [h.strip() for h in hosts.split(",")]
    if not names or any(not h or h.startswith(":") for h in names):
        raise BrokerAddressError(f"a host is missing in the RabbitMQ URL {masked(url)!r}")
    expanded = [f"{prefix}{host}{suffix}" for host in names]
    for candidate in expanded:
        try:
            parsed = URL(candidate)
            _ = parsed.port  # a port that is not a number raises here
        except ValueError as exc:
            raise BrokerAddressError(
                f"cannot read the RabbitMQ URL {masked(candidate)!r}: {exc}"
            ) from None
        if not parsed.host:
            raise BrokerAddressError(f"a host is missing in the RabbitMQ URL {masked(url)!r}")
    return expanded


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
