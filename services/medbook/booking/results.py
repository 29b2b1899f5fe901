"""The result consumer: applies each ``discount_processed`` to its booking.

Results are applied in batches (group commit, ``group_commit.py``): the domain says
what each result does to a PENDING booking, and one conditional statement
stores all of them (``... AND status = 'PENDING'``). A result whose booking had
left PENDING meanwhile (swept, cancelled) or that is a repeat is decided again
against the booking as stored, locked, one by one. The consumer acks only after
the commit, so a result is never lost and a repeat changes nothing. A result
that conflicts with the one a booking holds is ignored (and counted); one for a
booking that does not exist gives back the unit it reserved, then goes to the
dead-letter queue for inspection.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace

from medbook import contracts, metrics
from medbook.booking import domain
from medbook.booking.domain import Booking, ResultDecision, ResultVerdict
from medbook.booking.store import BookingStore
from medbook.clock import utcnow
from medbook.contracts import BookingStatus, DiscountProcessed
from medbook.messaging import DeadLetter
from medbook.telemetry import exemplar, inject_headers, process_span

log = logging.getLogger(__name__)
tracer = trace.get_tracer("medbook.booking")


@dataclass(frozen=True, slots=True)
class AppliedResult:
    decision: ResultDecision
    created_at: dt.datetime | None = None  # the booking's, when the result was applied


async def apply_results(
    store: BookingStore, results: Sequence[DiscountProcessed]
) -> list[AppliedResult]:
    """Apply a batch of results: one statement for those whose booking is PENDING."""
    now = utcnow()
    decisions = [
        domain.apply_result(Booking(r.booking_id, BookingStatus.PENDING), r, now) for r in results
    ]
    transitions = [d.transition for d in decisions if d.transition is not None]
    applied = await store.apply_pending(transitions)
    outcomes = []
    for result, decision in zip(results, decisions, strict=True):
        created_at = applied.pop(result.booking_id, None)
        if created_at is not None:
            outcomes.append(AppliedResult(decision, created_at))
        else:
            outcomes.append(AppliedResult(await _apply_to_stored(store, result, now)))
    return outcomes


async def _apply_to_stored(
    store: BookingStore, result: DiscountProcessed, now: dt.datetime
) -> ResultDecision:
    async with store.transaction() as tx:
        decision = domain.apply_result(await tx.locked(result.booking_id), result, now)
        if decision.transition is not None:
            await tx.persist(decision.transition, inject_headers())
        elif decision.orphan_events:
            await tx.emit(result.booking_id, decision.orphan_events, inject_headers())
        return decision


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
        apply: Callable[[DiscountProcessed], Awaitable[AppliedResult]],
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
        with process_span(
            tracer,
            "booking.apply_result",
            message,
            contracts.BOOKING_QUEUE,
            {"medbook.booking_id": str(result.booking_id), "medbook.status": result.status.value},
        ):
            await self.apply(result)

    async def apply(self, result: DiscountProcessed) -> None:
        outcome = await self.apply_result(result)
        decision = outcome.decision
        if decision.verdict is ResultVerdict.APPLIED:
            assert outcome.created_at is not None
            self.finished()
            metrics.SAGA_OUTCOMES.labels(result.status.value, outcome_reason(result)).inc()
            metrics.SAGA_DURATION.labels(result.status.value).observe(
                (utcnow() - outcome.created_at).total_seconds(), exemplar=exemplar()
            )
            log.debug("booking %s %s", result.booking_id, result.status.value)
        elif decision.verdict is ResultVerdict.DUPLICATE:
            metrics.DUPLICATES_DETECTED.labels(contracts.BOOKING_QUEUE).inc()
            log.info("duplicate result for booking %s ignored", result.booking_id)
        elif decision.verdict is ResultVerdict.LATE:
            assert decision.transition is not None
            log.info(
                "late result for booking %s (already %s)%s",
                result.booking_id,
                decision.transition.expect,
                "; its quota unit goes back" if decision.releases else "",
            )
            if decision.releases:
                metrics.QUOTA_RELEASE_REQUESTS.labels(
                    contracts.ReleaseReason.LATE_RESULT.value
                ).inc()
                self.wake_relay()
        elif decision.verdict is ResultVerdict.CONFLICTING:
            metrics.CONFLICTING_RESULTS.inc()
            log.warning(
                "result %s for booking %s ignored: the booking has another result already "
                "(a forged message, or a bug)",
                result.result_id,
                result.booking_id,
            )
        else:
            if decision.releases:
                self.wake_relay()
                metrics.QUOTA_RELEASE_REQUESTS.labels(
                    contracts.ReleaseReason.ORPHAN_RESULT.value
                ).inc()
            raise DeadLetter(
                f"result for unknown booking {result.booking_id}"
                + ("; its quota unit goes back" if decision.releases else ""),
                "unknown_booking",
            )
