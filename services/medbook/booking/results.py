"""The result consumer: applies each ``discount_processed`` to its booking.

One conditional statement per result (``WHERE status = 'PENDING'``), acked by
the consumer only after the commit. A duplicate result changes nothing; a
result for a booking that is no longer PENDING (swept or cancelled) is
recorded in its history and, if it holds a quota unit, gives it back through
the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace

from medbook import contracts, metrics
from medbook.booking.store import ApplyOutcome, ResultOutcome, utcnow
from medbook.contracts import BookingStatus, DiscountProcessed
from medbook.messaging import DeadLetter
from medbook.telemetry import consumer_parent, span

log = logging.getLogger(__name__)
tracer = trace.get_tracer("medbook.booking")


def outcome_reason(result: DiscountProcessed) -> str:
    """A bounded reason code for the saga-outcome metric."""
    if result.status is BookingStatus.CONFIRMED:
        return "discount_applied" if result.quota_day else "no_discount"
    if result.reason == contracts.BLOCKED_USER_REASON:
        return "blocked_user"
    if result.reason == contracts.QUOTA_EXHAUSTED_REASON:
        return "quota_exhausted"
    return "other"


class ResultHandler:
    def __init__(
        self,
        apply: Callable[[DiscountProcessed], Awaitable[ApplyOutcome]],
        wake_relay: Callable[[], None],
        finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.apply_result = apply
        self.wake_relay = wake_relay
        self.finished = finished  # a booking left PENDING (admission control makes room)

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        result = contracts.decode(message.type, message.body)
        if not isinstance(result, DiscountProcessed):
            raise contracts.MalformedMessage(
                f"{message.type} does not belong on {contracts.BOOKING_QUEUE}"
            )
        with span(
            tracer,
            "booking.apply_result",
            context=consumer_parent(message.headers),
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "medbook.booking_id": str(result.booking_id),
                "medbook.status": result.status.value,
            },
        ):
            await self.apply(result)

    async def apply(self, result: DiscountProcessed) -> None:
        outcome = await self.apply_result(result)
        if outcome.outcome is ResultOutcome.APPLIED:
            assert outcome.created_at is not None
            self.finished()
            metrics.SAGA_OUTCOMES.labels(result.status.value, outcome_reason(result)).inc()
            metrics.SAGA_DURATION.labels(result.status.value).observe(
                (utcnow() - outcome.created_at).total_seconds()
            )
            log.debug("booking %s %s", result.booking_id, result.status.value)
        elif outcome.outcome is ResultOutcome.DUPLICATE:
            metrics.DUPLICATES_DETECTED.labels(contracts.BOOKING_QUEUE).inc()
            log.info("duplicate result for booking %s ignored", result.booking_id)
        elif outcome.outcome is ResultOutcome.LATE:
            log.info(
                "late result for booking %s (already %s)%s",
                result.booking_id,
                outcome.current_status,
                "; its quota unit goes back" if outcome.released else "",
            )
            if outcome.released:
                metrics.QUOTA_RELEASE_REQUESTS.labels(
                    contracts.ReleaseReason.LATE_RESULT.value
                ).inc()
                self.wake_relay()
        else:
            raise DeadLetter(f"result for unknown booking {result.booking_id}", "unknown_booking")
