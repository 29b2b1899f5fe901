"""The discount worker: decides each booking's discount and answers with one result.

For a ``booking_created``: plan the decision (``decision.py``, pure), then in
one atomic Redis step reserve the quota unit it needs and store the result in
the booking's idempotency record, unless a result is stored there already (the
first stored wins, and a repeat re-sends it byte for byte); publish the result,
and only then let the consumer ack. For a
``quota_released``: give the unit back, once, and only to a release that names
the result that reserved it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from opentelemetry import trace

from medbook import contracts, metrics
from medbook.background import Background, every
from medbook.clock import utcnow
from medbook.config import DiscountSettings
from medbook.contracts import BookingCreated, DiscountProcessed, Event, QuotaReleased
from medbook.discount import decision
from medbook.discount.idempotency import IdempotencyStore
from medbook.discount.policy import QuotaPolicy
from medbook.discount.policy_store import PolicySource, PolicyStore
from medbook.discount.quota import QuotaStore, Released
from medbook.discount.replica_ack import ReplicaAck
from medbook.failures import DependencyUnavailable
from medbook.messaging import Consumer, Publisher, connect
from medbook.redis_address import describe as describe_redis
from medbook.redis_connection import redis_client, redis_errors
from medbook.redis_sentinel import refuse_cluster_mode
from medbook.telemetry import inject_headers, process_span

log = logging.getLogger(__name__)
tracer = trace.get_tracer("medbook.discount")


class DiscountWorker:
    def __init__(self, settings: DiscountSettings) -> None:
        self.settings = settings
        self.redis = redis_client(
            settings.redis.dsn, max_connections=max(64, settings.rabbit.prefetch * 2)
        )
        replicas = ReplicaAck(
            settings.redis.replicas_to_wait_for, int(settings.redis.wait_timeout * 1000)
        )
        self.records = IdempotencyStore(self.redis, settings.record_ttl_seconds, replicas)
        self.quota = QuotaStore(self.redis, replicas)
        self.policy_store = PolicyStore(self.redis)
        self.policy = PolicySource(
            self.policy_store,
            QuotaPolicy.from_defaults(settings.policy),
            interval=settings.policy_refresh_interval,
        )
        self.stopping = asyncio.Event()
        self.connection: AbstractRobustConnection | None = None
        self.publisher: Publisher | None = None
        self.consumer: Consumer | None = None
        self.tasks = Background()

    # -- lifecycle -----------------------------------------------------------------

    async def _refuse_redis_cluster(self) -> None:
        """A Redis Cluster behind a plain URL is refused at start, with the reason
        (redis_address.py); a Redis that does not answer yet is checked no further."""
        try:
            with redis_errors():
                await refuse_cluster_mode(self.redis)
        except DependencyUnavailable as exc:
            log.info("cannot ask Redis whether it runs as a cluster yet (%s)", exc.detail)

    async def start(self) -> None:
        log.info(
            "Redis: %s; a quota write counts once %d replica(s) acknowledged it",
            describe_redis(self.settings.redis.dsn),
            self.records.replicas.replicas,
        )
        await self._refuse_redis_cluster()
        await self.policy.refresh()
        self.tasks.start(
            every(self.policy.interval, self.policy.refresh, name="policy refresh"),
            name="policy-refresh",
        )
        self.connection = await connect(
            self.settings.rabbit.url.get_secret_value(), "medbook-discount", stopping=self.stopping
        )
        rabbit = self.settings.rabbit
        self.publisher = Publisher(self.connection, signer=rabbit.signer())
        await self.publisher.start()
        self.consumer = Consumer.configured(
            self.connection,
            contracts.DISCOUNT_QUEUE,
            self.handle,
            publisher=self.publisher,
            rabbit=rabbit,
        )
        await self.consumer.start()
        self.tasks.start(every(5.0, self.refresh_gauges, name="quota gauges"), name="quota-gauges")
        log.info("discount worker started")

    async def stop(self) -> None:
        self.stopping.set()
        if self.consumer is not None:
            await self.consumer.stop(self.settings.shutdown_grace)
        await self.tasks.stop()
        if self.publisher is not None:
            await self.publisher.close()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        await self.redis.aclose()
        log.info("discount worker stopped")

    @property
    def broker_connected(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set()

    async def ready(self) -> dict[str, bool]:
        try:
            with redis_errors():
                redis_ok = bool(await asyncio.wait_for(self.redis.ping(), 2))
        except Exception:
            redis_ok = False
        return {"redis": redis_ok, "broker": self.broker_connected}

    # -- messages ------------------------------------------------------------------

    async def handle(self, message: AbstractIncomingMessage) -> None:
        event = contracts.decode(message.type, message.body)
        booking = {"medbook.booking_id": str(getattr(event, "booking_id", ""))}
        queue = contracts.DISCOUNT_QUEUE
        if isinstance(event, BookingCreated):
            with process_span(tracer, "discount.process", message, queue, booking):
                await self.process_booking(event, redelivered=bool(message.redelivered))
        elif isinstance(event, QuotaReleased):
            with process_span(tracer, "discount.release", message, queue, booking):
                await self.release(event)
        else:
            raise contracts.MalformedMessage(
                f"{message.type} does not belong on {contracts.DISCOUNT_QUEUE}"
            )

    async def process_booking(self, booking: BookingCreated, *, redelivered: bool = False) -> None:
        """Plan, then reserve-and-complete (one Redis script), then publish.

        The script stores the plan's result unless one is stored already, in which
        case that one is published again (a repeat of a booking already decided):
        the decision is pure, so planning before knowing costs nothing but CPU, and
        one round trip to Redis does what a claim and a completion did in two.
        """
        started = time.perf_counter()
        now = utcnow()
        policy = self.policy.current
        plan = decision.plan(booking, policy, now)
        completion = await self.records.complete(booking.booking_id, plan, now.isoformat())
        if completion.fresh:
            result, outcome = plan.resolve(bool(completion.granted))
            metrics.DISCOUNT_DECISIONS.labels(outcome.value).inc()
            if redelivered:  # delivered before, and no result stored: its worker stopped
                metrics.RECOVERED_CLAIMS.inc()
                log.info("booking %s was delivered before without a result; decided now",
                         booking.booking_id)  # fmt: skip
            if completion.used is not None:
                metrics.QUOTA_USED.set(completion.used)
                metrics.QUOTA_LIMIT.set(policy.daily_limit)
            await self._publish_result(completion.result, result_id=result.result_id)
        else:  # decided before (a redelivery, or a concurrent delivery): publish that result
            metrics.DUPLICATES_DETECTED.labels(contracts.DISCOUNT_QUEUE).inc()
            log.info("booking %s already decided; re-sending its stored result", booking.booking_id)
            await self._publish_result(completion.result)
        metrics.DISCOUNT_PROCESSING.observe(time.perf_counter() - started)
        log.debug("booking %s decided and its result published", booking.booking_id)

    async def _publish_result(self, body: bytes, result_id: uuid.UUID | None = None) -> None:
        assert self.publisher is not None
        if result_id is None:
            result_id = DiscountProcessed.model_validate_json(body).result_id
        await self.publisher.publish(
            Event.DISCOUNT_PROCESSED,
            body,
            headers=inject_headers(),
            message_id=str(result_id),
        )
        metrics.MESSAGES_PUBLISHED.labels(Event.DISCOUNT_PROCESSED.value).inc()

    async def release(self, event: QuotaReleased) -> None:
        outcome = await self.quota.release(event.booking_id, event.result_id, event.day)
        if outcome.verdict is Released.REFUSED:
            metrics.QUOTA_RELEASES_REFUSED.inc()
            log.warning(
                "release of booking %s's quota unit refused: result %s is not the one that "
                "holds it (%s; a forged or stale message)",
                event.booking_id,
                event.result_id,
                event.reason,
            )
            return
        if outcome.verdict is Released.NOTHING_HELD:
            log.info(
                "booking %s held no quota unit (%s); nothing to release",
                event.booking_id,
                event.reason,
            )
            return
        metrics.QUOTA_RELEASED.labels(event.reason.value).inc()
        log.info(
            "released the quota unit of booking %s on %s (%s)",
            event.booking_id,
            outcome.day,
            event.reason,
        )
        if outcome.day == self.policy.current.today(utcnow()):
            metrics.QUOTA_USED.set(await self.quota.used(outcome.day))

    async def refresh_gauges(self) -> None:
        policy = self.policy.current
        metrics.QUOTA_LIMIT.set(policy.daily_limit)
        metrics.QUOTA_USED.set(await self.quota.used(policy.today(utcnow())))
        metrics.POLICY_PUBLISHED.set(1 if self.policy.published else 0)
