"""RabbitMQ: topology, publishing with confirms, consuming with manual ack.

Topology: one durable direct exchange routes each event (routing key = event
name) to its quorum queue; each queue dead-letters to ``<queue>.dlq``. Every
publish is persistent, ``mandatory`` and waits for the broker's confirm.

A :class:`Consumer` runs one handler per delivery, concurrently, up to the
prefetch bound, and acks only when the handler returned. What a failure does
depends on its kind:

- a message that is not signed as required (``signing.py``, when signing is
  on), :class:`~medbook.contracts.MalformedMessage` or :class:`DeadLetter`: the
  message goes to the dead-letter queue at once, with the reason in a header;
- :class:`~medbook.failures.DependencyUnavailable` (the database, Redis or the
  broker cannot be reached): the handler is run again after a backoff, without
  counting a try, so a short outage never turns good messages into dead
  letters; an outage that outlasts ``outage_budget`` seconds dead-letters the
  message with the reason;
- anything else (a bug, a dependency that is busy, a handler that took longer
  than ``message_timeout``): the message is re-queued with its try count in a
  header and dead-lettered, with the reason and the count, after ``max_tries``.

The AMQP driver's errors are translated here (:func:`amqp_errors`) into the
taxonomy of ``medbook.failures``, as the other adapters do with theirs.

As a safety net for messages that crash the whole process, the queues also
carry the broker's own ``x-delivery-limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    DeliveryMode,
)
from opentelemetry import trace

from medbook import metrics
from medbook.acks import AckCoalescer
from medbook.backoff import Backoff
from medbook.broker_connection import broker_urls, connect_robust_any, is_nack
from medbook.clock import utcnow
from medbook.config import RabbitSettings
from medbook.contracts import (
    ATTEMPT_HEADER,
    CONTRACT_VERSION,
    CONTRACT_VERSION_HEADER,
    DEAD_LETTER_AT_HEADER,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_TRIES_HEADER,
    EVENT_QUEUE,
    EXCHANGE,
    Event,
    MalformedMessage,
    dead_letter_queue,
)
from medbook.failures import Dependency, DependencyUnavailable, translated_errors
from medbook.signing import NO_SIGNING, MessageSigner, SignatureRefused
from medbook.telemetry import message_context, publish_span, use_context

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Deliveries (crashed consumers included) after which the broker itself
# dead-letters a message. Part of the queue's arguments, so a constant: changing
# it would make the next declaration fail against the existing queue.
BROKER_DELIVERY_LIMIT: Final = 20

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class HandlerTimedOut(Exception):
    """A handler ran longer than the consumer's per-message timeout."""


class DeadLetter(Exception):
    """Raised by a handler for a message that must go to the dead-letter queue now."""

    def __init__(self, reason: str, label: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.label = label


_NOT_AN_OUTAGE: Final[tuple[type[BaseException], ...]] = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.IncompatibleProtocolError,
    aiormq.exceptions.PublishError,  # unroutable: the topology is missing, a bug
)
_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    aiormq.exceptions.AMQPConnectionError,  # refused, lost, closed by the broker
    aiormq.exceptions.ChannelInvalidStateError,  # the channel went with its connection
    aiormq.exceptions.DeliveryError,  # nacked: e.g. a quorum queue without a leader
    ConnectionError,
    TimeoutError,  # no confirm in time
)


def translate(exc: BaseException) -> BaseException:
    """The taxonomy's exception for an aio-pika/aiormq error, or ``exc`` itself."""
    if isinstance(exc, _NOT_AN_OUTAGE):
        return exc
    # A channel closed by a connection that went away (not by a refusal: those are subclasses).
    if isinstance(exc, _UNAVAILABLE) or type(exc) is aiormq.exceptions.ChannelClosed:
        return DependencyUnavailable(Dependency.BROKER, f"{type(exc).__name__}: {exc}")
    return exc


def amqp_errors() -> contextlib.AbstractContextManager[None]:
    """Raise the AMQP driver's errors inside the block as the taxonomy's exceptions."""
    return translated_errors(translate)


def queue_arguments(queue: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue,
        "x-delivery-limit": BROKER_DELIVERY_LIMIT,
    }


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """Declare exchanges, queues, dead-letter queues and bindings (idempotent)."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for queue_name in sorted(set(EVENT_QUEUE.values())):
        dlq = await channel.declare_queue(
            dead_letter_queue(queue_name), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dlx, routing_key=queue_name)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments=queue_arguments(queue_name)
        )
        for event, target in EVENT_QUEUE.items():
            if target == queue_name:
                await queue.bind(exchange, routing_key=event.value)
    return exchange


async def connect(
    url: str, name: str, *, stopping: asyncio.Event | None = None
) -> AbstractRobustConnection:
    """A robust connection (it reconnects and restores consumers by itself).

    ``url`` may name several nodes of a cluster (broker_connection.py): the
    connection is made on the first that answers and moves to another when its
    node dies. The first connection is retried with backoff until it succeeds or
    ``stopping`` is set, so a service can start before its broker. A refusal
    that is not an outage (a wrong password, say) is raised at once.
    """
    urls = broker_urls(url)
    backoff = Backoff(initial=0.2, maximum=5.0)
    while True:
        try:
            with amqp_errors():
                return await connect_robust_any(
                    urls, name=name, connect_timeout=5, reconnect_interval=1
                )
        except DependencyUnavailable as exc:
            if stopping is not None and stopping.is_set():
                raise
            delay = await backoff.wait(stopping)
            log.warning("broker not reachable (%s), retried after %.1fs", exc.detail, delay)


PERSISTENT: Final = int(DeliveryMode.PERSISTENT)


def event_properties(
    event: str,
    headers: dict[str, Any],
    *,
    message_id: str | None,
    correlation_id: str | None = None,
) -> aiormq.spec.Basic.Properties:
    """The properties of an event's frame: JSON, persistent, typed by the event, stamped now.

    Built directly rather than through an ``aio_pika.Message``, which would check and copy
    each field and then build these same properties from it."""
    return aiormq.spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        message_type=event,
        message_id=message_id,
        correlation_id=correlation_id,
        timestamp=utcnow(),
        headers=headers,
    )


def now_iso() -> str:
    return utcnow().isoformat()


class Publisher:
    """Publishes events on a channel with publisher confirms."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        *,
        timeout: float = 10.0,
        signer: MessageSigner = NO_SIGNING,
    ) -> None:
        self.connection = connection
        self.timeout = timeout
        self.signer = signer
        self.channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None
        self._generation = 0  # which channel is current (renewed after a nack)
        self._renewing = asyncio.Lock()

    async def start(self) -> None:
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self.exchange = await declare_topology(self.channel)
        self._generation += 1

    async def _confirmed(self, publish: Awaitable[object]) -> None:
        """Await a publish (and its confirm); after a nack, publish on a new channel."""
        generation = self._generation
        try:
            with amqp_errors():
                await publish
        except DependencyUnavailable as exc:
            if is_nack(exc.__cause__ or exc):
                await self._renew(generation)
            raise

    async def _renew(self, generation: int) -> None:
        """A new channel for the next publishes (broker_connection.is_nack says why)."""
        async with self._renewing:
            if generation != self._generation:  # another publish renewed it already
                return
            log.warning("the broker refused a publish (nack): publishing on a new channel")
            old = self.channel
            try:
                with amqp_errors():
                    await self.start()
            except DependencyUnavailable as exc:  # the broker is away: keep the robust channel
                log.warning("cannot open a new publisher channel yet (%s)", exc.detail)
                return
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()

    async def close(self) -> None:
        if self.channel is not None and not self.channel.is_closed:
            with contextlib.suppress(Exception):
                await self.channel.close()

    async def publish(
        self,
        event: Event,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Publish persistently; return once the broker confirmed, raise otherwise."""
        if self.exchange is None:
            raise DependencyUnavailable(Dependency.BROKER, "the publisher is not started")
        exchange = self.exchange.name
        routing_key = event.value
        message_headers: dict[str, Any] = {
            CONTRACT_VERSION_HEADER: CONTRACT_VERSION,
            **(headers or {}),
            **self.signer.headers(routing_key, CONTRACT_VERSION, body),
        }
        server = self._server()
        with publish_span(
            tracer,
            exchange,
            routing_key,
            body,
            message_headers,
            message_id=message_id,
            server=server,
        ):
            properties = event_properties(
                routing_key, message_headers, message_id=message_id, correlation_id=correlation_id
            )
            await self._confirmed(self._send(exchange, routing_key, body, properties))

    async def publish_raw(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        """Publish a ready-made message (dead letters, retries, replays) with a confirm."""
        if self.channel is None:
            raise DependencyUnavailable(Dependency.BROKER, "the publisher is not started")
        with publish_span(
            tracer,
            exchange,
            routing_key,
            message.body,
            message.headers,
            message_id=message.message_id,
            server=self._server(),
        ):
            await self._confirmed(
                self._send(exchange, routing_key, message.body, message.properties)
            )

    async def _send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
    ) -> None:
        """One mandatory publish on the channel, returning once the broker confirmed it.

        It goes to aiormq's channel without waiting for the frame to reach the socket
        (``wait=False``): the channel's lock is then held only while the frame is queued,
        not for the loop turns until the writer task has written it, so the concurrent
        publishes of a relay batch or of the worker's handlers are queued in one turn
        and written back to back instead of one every few turns. The confirm is awaited
        all the same, and frames leave in the order they were queued.
        """
        channel = self.channel
        if channel is None or channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the publisher's channel is closed")
        # aio-pika's channels wrap aiormq's (whose basic_publish takes ``wait``).
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        await underlay.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            timeout=self.timeout,
            wait=False,
        )

    def _server(self) -> tuple[str, int] | None:
        """The broker node published to (``server.*`` of the publish spans)."""
        url = getattr(self.connection, "url", None)
        if url is None or url.host is None:
            return None
        return url.host, url.port or 5672


def copy_message(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> aio_pika.Message:
    """A persistent copy of a delivered message with extra headers."""
    return aio_pika.Message(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=DeliveryMode.PERSISTENT,
        type=message.type,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        headers={**(message.headers or {}), **headers},
    )


class Consumer:
    """Consumes one queue: manual ack, bounded prefetch, concurrent handlers."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue_name: str,
        handler: Handler,
        *,
        publisher: Publisher,
        prefetch: int,
        max_tries: int,
        outage_budget: float = 600.0,
        message_timeout: float = 30.0,
        retry_backoff: float = 0.2,
        unavailable_backoff_max: float = 5.0,
        signer: MessageSigner = NO_SIGNING,
    ) -> None:
        self.signer = signer
        self.connection = connection
        self.queue_name = queue_name
        self.handler = handler
        self.publisher = publisher
        self.prefetch = prefetch
        self.max_tries = max_tries
        self.outage_budget = outage_budget
        self.message_timeout = message_timeout
        self.retry_backoff = retry_backoff
        self.unavailable_backoff_max = unavailable_backoff_max
        self.stopping = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self.acks = AckCoalescer()
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def configured(
        cls,
        connection: AbstractRobustConnection,
        queue_name: str,
        handler: Handler,
        *,
        publisher: Publisher,
        rabbit: RabbitSettings,
    ) -> Consumer:
        """A consumer with the process's settings: prefetch, tries, outage budget, message
        timeout and signature check, as both services run theirs."""
        return cls(
            connection,
            queue_name,
            handler,
            publisher=publisher,
            prefetch=rabbit.prefetch,
            max_tries=rabbit.max_tries,
            outage_budget=rabbit.outage_budget,
            message_timeout=rabbit.message_timeout,
            signer=rabbit.signer(),
        )

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        self._channel = await self.connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self._channel.declare_queue(
            self.queue_name, durable=True, arguments=queue_arguments(self.queue_name)
        )
        self._tag = await self._queue.consume(self._on_message)
        log.info("consuming %s (prefetch %d)", self.queue_name, self.prefetch)

    async def stop(self, grace: float) -> None:
        """Stop taking messages, let in-flight ones finish (up to ``grace`` s), close."""
        self.stopping.set()
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._tag), timeout=2)
        if self._in_flight:
            log.info(
                "waiting for %d in-flight message(s) on %s", len(self._in_flight), self.queue_name
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace)
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            # Closing the channel hands every unacked message back to the broker.
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._idle.clear()
        self.acks.received(message)
        try:
            with use_context(message_context(message)):  # its trace, in logs and retries
                await self._process(message)
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        event = message.type or "unknown"
        headers = message.headers or {}
        try:
            self.signer.verify(
                message.type, headers.get(CONTRACT_VERSION_HEADER), message.body, headers
            )
        except SignatureRefused as exc:
            await self._dead_letter(message, str(exc), "unsigned", tries=self._tries(message) + 1)
            return
        backoff = Backoff(initial=self.retry_backoff, maximum=self.unavailable_backoff_max)
        outage_since: float | None = None
        while True:
            try:
                await self._run_handler(message)
            except (MalformedMessage, DeadLetter) as exc:
                label = exc.label if isinstance(exc, DeadLetter) else "malformed"
                await self._dead_letter(message, str(exc), label, tries=self._tries(message) + 1)
                return
            except asyncio.CancelledError:
                await self._settle(message, message.nack(requeue=True), sent_back=True)
                raise
            except DependencyUnavailable as exc:
                if self.stopping.is_set():
                    log.warning(
                        "%s: %s unavailable during shutdown; the message returns to %s",
                        event,
                        exc.what,
                        self.queue_name,
                    )
                    await self._settle(message, message.nack(requeue=True), sent_back=True)
                    return
                now = time.monotonic()
                outage_since = now if outage_since is None else outage_since
                if now - outage_since >= self.outage_budget:
                    reason = (
                        f"{exc.what} was unavailable for longer than the outage budget "
                        f"({self.outage_budget:g}s): {exc.detail}"
                    )
                    await self._dead_letter(
                        message, reason, "outage", tries=self._tries(message) + 1
                    )
                    return
                metrics.MESSAGES_RETRIED.labels(self.queue_name, "unavailable").inc()
                delay = await backoff.wait(self.stopping)
                log.warning("%s: %s; retried after %.1fs", event, exc, delay)
                continue
            except Exception as exc:
                await self._failed(message, exc)
                return
            else:
                await self._settle(message, self.acks.ack(message))
                metrics.MESSAGES_CONSUMED.labels(self.queue_name, event, "acked").inc()
                return

    async def _run_handler(self, message: AbstractIncomingMessage) -> None:
        """The handler, stopped after ``message_timeout`` seconds (a counted failure)."""
        try:
            async with asyncio.timeout(self.message_timeout) as deadline:
                await self.handler(message)
        except TimeoutError:
            if deadline.expired():
                raise HandlerTimedOut(
                    f"the handler did not finish within {self.message_timeout:g}s"
                ) from None
            raise

    def _tries(self, message: AbstractIncomingMessage) -> int:
        try:
            return int(str((message.headers or {}).get(ATTEMPT_HEADER, 0)))
        except ValueError:
            return 0

    async def _failed(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        tries = self._tries(message) + 1
        reason = f"{type(exc).__name__}: {exc}"
        if tries >= self.max_tries:
            log.error("%s failed %d time(s), dead-lettering: %s", message.type, tries, reason)
            await self._dead_letter(message, reason, "max_tries", tries=tries)
            return
        log.warning(
            "%s failed (try %d of %d): %s",
            message.type,
            tries,
            self.max_tries,
            reason,
            exc_info=exc,
        )
        await asyncio.sleep(Backoff(initial=self.retry_backoff, maximum=2.0).delay_for(tries))
        retry = copy_message(message, {ATTEMPT_HEADER: tries})
        try:
            await self.publisher.publish_raw("", self.queue_name, retry)
        except Exception as publish_exc:
            log.warning(
                "cannot re-queue %s for a retry (%r); the broker will redeliver it",
                message.type,
                publish_exc,
            )
            await self._settle(message, message.nack(requeue=True), sent_back=True)
            return
        await self._settle(message, self.acks.ack(message))
        metrics.MESSAGES_RETRIED.labels(self.queue_name, "failed").inc()
        metrics.MESSAGES_CONSUMED.labels(
            self.queue_name, message.type or "unknown", "retried"
        ).inc()

    async def _dead_letter(
        self, message: AbstractIncomingMessage, reason: str, label: str, *, tries: int
    ) -> None:
        log.error(
            "dead-lettering %s from %s: %s", message.type or "message", self.queue_name, reason
        )
        copy = copy_message(
            message,
            {
                DEAD_LETTER_REASON_HEADER: reason[:1000],
                DEAD_LETTER_TRIES_HEADER: tries,
                DEAD_LETTER_QUEUE_HEADER: self.queue_name,
                DEAD_LETTER_AT_HEADER: now_iso(),
            },
        )
        try:
            await self.publisher.publish_raw(DEAD_LETTER_EXCHANGE, self.queue_name, copy)
        except Exception as exc:
            # Let the broker's own dead-lettering take it (reason in x-death).
            log.error("cannot publish the dead letter (%r); rejecting to the broker's DLX", exc)
            await self._settle(message, message.reject(requeue=False), sent_back=True)
        else:
            await self._settle(message, self.acks.ack(message))
        metrics.MESSAGES_DEAD_LETTERED.labels(self.queue_name, label).inc()
        metrics.MESSAGES_CONSUMED.labels(
            self.queue_name, message.type or "unknown", "dead_lettered"
        ).inc()

    async def _settle(
        self, message: AbstractIncomingMessage, settle: Awaitable[None], *, sent_back: bool = False
    ) -> None:
        """Ack (coalesced: acks.py), nack or reject; on a lost channel the broker redelivers by
        itself, so that is not an error."""
        try:
            if sent_back:  # outstanding until sent, so that no coalesced ack covers it
                async with self.acks.settling(message):
                    await settle
            else:
                await settle
        except Exception as exc:
            log.info(
                "could not settle a message on %s (%r); the broker will redeliver it",
                self.queue_name,
                exc,
            )
