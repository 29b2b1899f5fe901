"""The discount worker: decides each booking's discount and answers with one result.

For a ``booking_created``: claim the booking's idempotency record (a booking
already done re-sends its stored result), apply the rules, reserve a quota unit
when eligible, store the result (the first stored wins), publish it and only
then let the consumer ack. For a ``quota_released``: give the unit back, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from opentelemetry import trace
from redis.asyncio import Redis

from medbook import contracts, metrics
from medbook.config import DiscountSettings
from medbook.contracts import (
    BookingCreated,
    BookingStatus,
    DiscountProcessed,
    Event,
    QuotaReleased,
    SagaState,
    SagaStep,
)
from medbook.discount import rules
from medbook.discount.idempotency import IdempotencyStore, RecordState
from medbook.discount.policy import PolicySource, PolicyStore, QuotaPolicy
from medbook.discount.quota import QuotaStore
from medbook.messaging import Consumer, Publisher, connect
from medbook.telemetry import extract_context, inject_headers

log = logging.getLogger(__name__)
tracer = trace.get_tracer("medbook.discount")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DiscountWorker:
    def __init__(self, settings: DiscountSettings) -> None:
        self.settings = settings
        self.redis = Redis.from_url(
            settings.redis.dsn,
            socket_connect_timeout=3,
            socket_timeout=5,
            health_check_interval=10,
            max_connections=max(64, settings.rabbit.prefetch * 2),
        )
        self.records = IdempotencyStore(self.redis, settings.record_ttl_seconds)
        self.quota = QuotaStore(self.redis)
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
        self._gauges: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.policy.start()
        self.connection = await connect(
            self.settings.rabbit.url.get_secret_value(), "medbook-discount", stopping=self.stopping
        )
        self.publisher = Publisher(self.connection)
        await self.publisher.start()
        self.consumer = Consumer(
            self.connection,
            contracts.DISCOUNT_QUEUE,
            self.handle,
            publisher=self.publisher,
            prefetch=self.settings.rabbit.prefetch,
            max_tries=self.settings.rabbit.max_tries,
            on_dead_letter=self.compensate_dead_letter,
        )
        await self.consumer.start()
        self._gauges = asyncio.create_task(self._refresh_gauges(), name="quota-gauges")
        log.info("discount worker started")

    async def stop(self) -> None:
        self.stopping.set()
        if self.consumer is not None:
            await self.consumer.stop(self.settings.shutdown_grace)
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
        await self.policy.stop()
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
            redis_ok = bool(await asyncio.wait_for(self.redis.ping(), 2))
        except Exception:
            redis_ok = False
        return {"redis": redis_ok, "broker": self.broker_connected}

    # -- messages ------------------------------------------------------------------

    async def handle(self, message: AbstractIncomingMessage) -> None:
        event = contracts.decode(message.type, message.body)
        parent = extract_context(message.headers)
        if isinstance(event, BookingCreated):
            with tracer.start_as_current_span(
                "discount.process",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes={"medbook.booking_id": str(event.booking_id)},
            ):
                await self.process_booking(event)
        elif isinstance(event, QuotaReleased):
            with tracer.start_as_current_span(
                "discount.release",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes={"medbook.booking_id": str(event.booking_id)},
            ):
                await self.release(event)
        else:
            raise contracts.MalformedMessage(
                f"{message.type} does not belong on {contracts.DISCOUNT_QUEUE}"
            )

    async def process_booking(self, booking: BookingCreated) -> None:
        started = time.perf_counter()
        now = _now()
        claim = await self.records.claim(booking.booking_id, now.isoformat())
        if claim.previous is RecordState.DONE and claim.result is not None:
            metrics.DUPLICATES_DETECTED.labels(contracts.DISCOUNT_QUEUE).inc()
            log.info("booking %s already decided; re-sending its stored result", booking.booking_id)
            await self._publish_result(claim.result)
            return
        if claim.previous is RecordState.CLAIMED:
            metrics.RECOVERED_CLAIMS.inc()
            log.info(
                "booking %s was claimed before (attempt %d); processing it again",
                booking.booking_id,
                claim.attempts,
            )
        result = await self.decide(booking, now)
        stored = await self.records.complete(
            booking.booking_id, contracts.encode(result), _now().isoformat()
        )
        await self._publish_result(stored)
        metrics.DISCOUNT_PROCESSING.observe(time.perf_counter() - started)

    async def decide(self, booking: BookingCreated, now: dt.datetime) -> DiscountProcessed:
        policy = self.policy.current
        today = policy.today(now)
        steps = [
            SagaStep(
                state=SagaState.VALIDATING_ELIGIBILITY,
                message="Validating eligibility rules",
                at=now,
            )
        ]
        decision = rules.decide(booking, policy, today)
        status, final_price, reason, quota_day = (
            BookingStatus.CONFIRMED,
            booking.base_price,
            None,
            None,
        )
        if decision.verdict is rules.Verdict.BLOCKED:
            status, final_price, reason, outcome = (
                BookingStatus.REJECTED,
                None,
                decision.why,
                "blocked",
            )
        elif decision.verdict is rules.Verdict.NOT_ELIGIBLE:
            steps.append(
                SagaStep(
                    state=SagaState.NO_DISCOUNT,
                    message=f"Not eligible for a discount; price {booking.base_price}",
                    at=_now(),
                )
            )
            outcome = "no_discount"
        else:
            steps.append(
                SagaStep(
                    state=SagaState.CHECKING_QUOTA,
                    message=f"Eligible ({decision.why}); checking the daily quota for {today}",
                    at=_now(),
                )
            )
            reservation = await self.quota.reserve(booking.booking_id, today, policy.daily_limit)
            metrics.QUOTA_USED.set(reservation.used)
            metrics.QUOTA_LIMIT.set(policy.daily_limit)
            if reservation.granted:
                final_price = rules.discounted_price(booking.base_price, policy.discount_percent)
                quota_day = today
                steps.append(
                    SagaStep(
                        state=SagaState.APPLYING_DISCOUNT,
                        message=f"Applying {policy.discount_percent:g}% discount: "
                        f"{booking.base_price} -> {final_price} "
                        f"(quota {reservation.used}/{policy.daily_limit})",
                        at=_now(),
                    )
                )
                outcome = "discounted"
            else:
                status, final_price, reason = (
                    BookingStatus.REJECTED,
                    None,
                    contracts.QUOTA_EXHAUSTED_REASON,
                )
                outcome = "quota_exhausted"
        metrics.DISCOUNT_DECISIONS.labels(outcome).inc()
        return DiscountProcessed(
            booking_id=booking.booking_id,
            result_id=uuid.uuid4(),
            is_allowed=status is BookingStatus.CONFIRMED,
            status=status,
            final_price=final_price,
            reason=reason,
            quota_day=quota_day,
            steps=tuple(steps),
            trace_id=booking.trace_id,
            processed_at=_now(),
        )

    async def _publish_result(self, body: bytes) -> None:
        assert self.publisher is not None
        result = DiscountProcessed.model_validate_json(body)
        await self.publisher.publish(
            Event.DISCOUNT_PROCESSED,
            body,
            headers=inject_headers(),
            message_id=str(result.result_id),
            correlation_id=str(result.booking_id),
        )
        metrics.MESSAGES_PUBLISHED.labels(Event.DISCOUNT_PROCESSED.value).inc()

    async def release(self, event: QuotaReleased) -> None:
        day = await self.quota.release(event.booking_id, event.day)
        if day is None:
            log.info(
                "booking %s held no quota unit (%s); nothing to release",
                event.booking_id,
                event.reason,
            )
            return
        metrics.QUOTA_RELEASED.labels(event.reason.value).inc()
        log.info(
            "released the quota unit of booking %s on %s (%s)", event.booking_id, day, event.reason
        )
        if day == self.policy.current.today():
            metrics.QUOTA_USED.set(await self.quota.used(day))

    async def compensate_dead_letter(self, message: AbstractIncomingMessage) -> None:
        """A booking_created given up on: give back a unit it reserved without a stored result."""
        if message.type != Event.BOOKING_CREATED.value:
            return
        try:
            booking = BookingCreated.model_validate_json(message.body)
        except ValueError:
            return
        if await self.records.state(booking.booking_id) is RecordState.DONE:
            return
        day = await self.quota.release(booking.booking_id)
        if day is not None:
            metrics.QUOTA_RELEASED.labels("dead_letter").inc()
            log.warning(
                "[%s] released the quota unit of dead-lettered booking %s",
                SagaState.COMPENSATING.value,
                booking.booking_id,
            )

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                policy = self.policy.current
                metrics.QUOTA_LIMIT.set(policy.daily_limit)
                metrics.QUOTA_USED.set(await self.quota.used(policy.today()))
                metrics.POLICY_PUBLISHED.set(1 if self.policy.published else 0)
            except Exception as exc:
                log.debug("cannot refresh the quota gauges: %r", exc)
            await asyncio.sleep(5)
