"""The booking service's use cases: create and cancel a booking.

Each one asks the domain (``domain.py``) what should happen, has the store
persist it, wakes the outbox relay when an event was committed, and counts it
in the metrics. The HTTP layer (``api.py``) only parses requests and shapes
answers; results from the discount worker are applied in ``results.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context

from medbook import metrics
from medbook.booking import catalog, domain
from medbook.booking.admission import AdmissionControl
from medbook.booking.domain import BookingRequest, CancelDecision, CancelVerdict
from medbook.booking.store import BookingStore, Created, CreateOutcome, CreateRequest
from medbook.clock import utcnow
from medbook.contracts import BookingStatus, ReleaseReason
from medbook.telemetry import current_trace_id, inject_headers

tracer = trace.get_tracer("medbook.booking")


@dataclass(frozen=True, slots=True)
class Cancelled:
    decision: CancelDecision | None  # None: no such booking
    booking: Mapping[str, Any] | None  # the booking as it is now


class Bookings:
    def __init__(
        self,
        store: BookingStore,
        submit_create: Callable[[CreateRequest], Awaitable[CreateOutcome]],
        admission: AdmissionControl,
        wake_relay: Callable[[], None],
    ) -> None:
        self.store = store
        self.submit_create = submit_create  # a group commit of store.create_many
        self.admission = admission
        self.wake_relay = wake_relay

    async def create(
        self,
        request: BookingRequest,
        idempotency_key: str | None,
        *,
        parent: Context | None = None,
    ) -> CreateOutcome:
        """Create a PENDING booking with its event (or answer the booking of a replayed key).

        Raises :class:`~medbook.booking.domain.BookingRefused` before anything is
        stored when the request cannot be booked.
        """
        # Refuse a request that cannot be booked before it waits for admission.
        domain.price(request, catalog.BY_NAME)
        await self.admission.admit()
        now = utcnow()  # the booking is created now, after its wait for admission
        booking_id = uuid.uuid4()
        with tracer.start_as_current_span("booking.create", context=parent) as span:
            span.set_attribute("medbook.booking_id", str(booking_id))
            new = domain.create(
                request, catalog.BY_NAME, now, booking_id=booking_id, trace_id=current_trace_id()
            )
            outcome = await self.submit_create(
                CreateRequest(
                    booking=new,
                    headers=inject_headers(),
                    idempotency_key=idempotency_key,
                    fingerprint=request.fingerprint(),
                )
            )
        if outcome.created is Created.NEW:
            self.wake_relay()
            metrics.BOOKINGS_CREATED.inc()
        return outcome

    async def get(self, booking_id: uuid.UUID) -> Mapping[str, Any] | None:
        return await self.store.get(booking_id)

    async def cancel(self, booking_id: uuid.UUID) -> Cancelled:
        """Cancel a PENDING or CONFIRMED booking; its quota unit goes back through the outbox."""
        async with self.store.transaction() as tx:
            booking = await tx.locked(booking_id)
            if booking is None:
                return Cancelled(None, None)
            decision = domain.cancel(booking, utcnow())
            if decision.transition is not None:
                await tx.persist(decision.transition, inject_headers())
        if decision.verdict is CancelVerdict.CANCELLED:
            assert decision.transition is not None
            if decision.transition.events:
                self.wake_relay()
                metrics.QUOTA_RELEASE_REQUESTS.labels(ReleaseReason.CANCELLED.value).inc()
            if decision.previous is BookingStatus.PENDING:
                metrics.SAGA_OUTCOMES.labels(BookingStatus.CANCELLED.value, "cancelled").inc()
        return Cancelled(decision, await self.store.get(booking_id))
