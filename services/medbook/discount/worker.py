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
from dataclasses import dataclass

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
from medbook.telemetry import consumer_parent, inject_headers, span

log = logging.getLogger(__name__)
tracer = trace.get_tracer("medbook.discount")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Decided:
    result: bytes  # the result to publish (the one stored)
    fresh: bool  # stored by this delivery
    result_id: uuid.UUID | None  # its id, when this delivery made it


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
        parent = consumer_parent(message.headers)
        if isinstance(event, BookingCreated):
            with span(
                tracer,
                "discount.process",
                context=parent,
                kind=trace.SpanKind.INTERNAL,
                attributes={"medbook.booking_id": str(event.booking_id)},
            ):
                await self.process_booking(event)
        elif isinstance(event, QuotaReleased):
            with span(
                tracer,
                "discount.release",
                context=parent,
                kind=trace.SpanKind.INTERNAL,
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
        completion = await self.decide(booking, now)
        if completion.fresh:
            await self._publish_result(completion.result, result_id=completion.result_id)
        else:  # a concurrent delivery stored its result first: publish that one
            metrics.DUPLICATES_DETECTED.labels(contracts.DISCOUNT_QUEUE).inc()
            await self._publish_result(completion.result)
        metrics.DISCOUNT_PROCESSING.observe(time.perf_counter() - started)
        log.debug("booking %s decided and its result published", booking.booking_id)

    async def decide(self, booking: BookingCreated, now: dt.datetime) -> Decided:
        """Apply the rules, reserve a unit when eligible, and store the result (one Redis call)."""
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
        if decision.verdict is not rules.Verdict.ELIGIBLE:
            if decision.verdict is rules.Verdict.BLOCKED:
                result, outcome = (
                    self._result(booking, BookingStatus.REJECTED, steps, reason=decision.why),
                    "blocked",
                )
            else:
                steps.append(
                    SagaStep(
                        state=SagaState.NO_DISCOUNT,
                        at=_now(),
                        message=f"Not eligible for a discount; price {booking.base_price}",
                    )
                )
                result = self._result(
                    booking, BookingStatus.CONFIRMED, steps, price=booking.base_price
                )
                outcome = "no_discount"
            completion = await self.records.complete(
                booking.booking_id, contracts.encode(result), _now().isoformat()
            )
            metrics.DISCOUNT_DECISIONS.labels(outcome).inc()
            return Decided(completion.result, completion.fresh, result.result_id)

        steps.append(
            SagaStep(
                state=SagaState.CHECKING_QUOTA,
                at=_now(),
                message=f"Eligible ({decision.why}); checking the daily quota for {today}",
            )
        )
        price = rules.discounted_price(booking.base_price, policy.discount_percent)
        granted = self._result(
            booking,
            BookingStatus.CONFIRMED,
            [
                *steps,
                SagaStep(
                    state=SagaState.APPLYING_DISCOUNT,
                    at=_now(),
                    message=f"Applying {policy.discount_percent:g}% discount: "
                    f"{booking.base_price} -> {price}",
                ),
            ],
            price=price,
            quota_day=today,
        )
        denied = self._result(
            booking, BookingStatus.REJECTED, steps, reason=contracts.QUOTA_EXHAUSTED_REASON
        )
        completion = await self.records.reserve_and_complete(
            booking.booking_id,
            day=today,
            limit=policy.daily_limit,
            if_granted=contracts.encode(granted),
            if_denied=contracts.encode(denied),
            now=_now().isoformat(),
        )
        if completion.used is not None:
            metrics.QUOTA_USED.set(completion.used)
            metrics.QUOTA_LIMIT.set(policy.daily_limit)
        if completion.granted is not None:
            metrics.DISCOUNT_DECISIONS.labels(
                "discounted" if completion.granted else "quota_exhausted"
            ).inc()
        chosen = granted if completion.granted else denied
        return Decided(completion.result, completion.fresh, chosen.result_id)

    @staticmethod
    def _result(
        booking: BookingCreated,
        status: BookingStatus,
        steps: list[SagaStep],
        *,
        price: int | None = None,
        reason: str | None = None,
        quota_day: dt.date | None = None,
    ) -> DiscountProcessed:
        return DiscountProcessed(
            booking_id=booking.booking_id,
            result_id=uuid.uuid4(),
            is_allowed=status is BookingStatus.CONFIRMED,
            status=status,
            final_price=price,
            reason=reason,
            quota_day=quota_day,
            steps=tuple(steps),
            trace_id=booking.trace_id,
            processed_at=_now(),
        )

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
