"""The booking's state machine, pure: what each event does to a booking.

A booking is created ``PENDING`` together with its ``booking_created`` event.
One discount result moves it to ``CONFIRMED`` or ``REJECTED``; a cancel moves a
``PENDING`` or ``CONFIRMED`` booking to ``CANCELLED``; the timeout sweep
rejects one left ``PENDING`` too long. A result that comes after the booking
left ``PENDING`` without one (swept, cancelled) is recorded but changes nothing
else, and gives back the quota unit it reserved. A booking that has its result
keeps it: any other result for it (a forgery, or a bug) changes nothing at all.

Quota units go back only through the result that granted them: every
``quota_released`` names that result (``resultId``), and the discount worker
honours it only if it is the result it stored for the booking. So a cancel of a
``PENDING`` booking and the sweep emit no release: the booking does not know yet
whether a unit was reserved, and its result, when it comes, takes the late path
and gives the unit back.

Each function takes the booking as stored (or the request) and the current
time, and returns what should happen: a :class:`Transition` (the fields that
change, the history lines to append, the events to put in the outbox) and a
verdict the caller reports. Storing a transition, and guarding it against a
concurrent change, is the store's job (``booking/store.py``). Nothing here does
I/O, reads a clock or counts metrics, so every rule is tested in milliseconds
(``tests/unit/test_booking_domain.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Final, Literal

import orjson

from medbook.booking.catalog import CatalogItem
from medbook.clock import js_iso
from medbook.contracts import (
    TIMEOUT_REASON,
    BookingCreated,
    BookingStatus,
    DiscountProcessed,
    Gender,
    QuotaReleased,
    ReleaseReason,
    SagaState,
    ServiceItem,
)

CANCELLABLE: Final = frozenset({BookingStatus.PENDING, BookingStatus.CONFIRMED})

OutboxEvent = BookingCreated | QuotaReleased


class _Keep(Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""A field a transition leaves as it is."""

Keep = Literal[_Keep.KEEP]


# -- what the rules know of a booking ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookingRequest:
    """A validated request to book (the HTTP layer parses it: booking/validation.py)."""

    user_name: str
    gender: Gender
    dob: dt.date
    service_names: tuple[str, ...]
    user_id: str

    def fingerprint(self) -> str:
        """A digest of the request's meaning, for Idempotency-Key comparisons."""
        canonical = orjson.dumps(
            [
                self.user_name,
                self.gender.value,
                self.dob.isoformat(),
                list(self.service_names),
                self.user_id,
            ]
        )
        return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class Booking:
    """A stored booking, as much of it as the transitions depend on."""

    id: uuid.UUID
    status: BookingStatus
    quota_day: dt.date | None = None  # the day of the quota unit it holds
    result_id: uuid.UUID | None = None  # the discount result applied or recorded


@dataclass(frozen=True, slots=True)
class Transition:
    """What happens to one booking: changed fields, history appended, events emitted.

    ``expect`` is the status the booking must still have when the transition is
    stored (None: whatever it is); the store applies the transition only then.
    """

    booking_id: uuid.UUID
    at: dt.datetime
    history: tuple[str, ...] = ()
    events: tuple[OutboxEvent, ...] = ()
    expect: BookingStatus | None = None
    status: BookingStatus | Keep = KEEP
    final_price: int | Keep | None = KEEP
    fail_reason: str | Keep | None = KEEP
    quota_day: dt.date | Keep | None = KEEP
    result_id: uuid.UUID | Keep | None = KEEP
    completes: bool = False  # the booking leaves PENDING now (completed_at)

    def changes(self) -> dict[str, object]:
        """The fields this transition sets, by name (``status``, ``final_price``, ...)."""
        values: dict[str, object] = {
            "status": self.status,
            "final_price": self.final_price,
            "fail_reason": self.fail_reason,
            "quota_day": self.quota_day,
            "result_id": self.result_id,
        }
        return {name: value for name, value in values.items() if value is not KEEP}


def history_entry(moment: dt.datetime, text: str) -> str:
    """One history line, as the reference writes them: ``[<iso time>] <text>``."""
    return f"[{js_iso(moment)}] {text}"


# -- create ----------------------------------------------------------------------------


class BookingRefused(ValueError):
    """The request is well formed but cannot be booked (a service not offered, say)."""


@dataclass(frozen=True, slots=True)
class NewBooking:
    event: BookingCreated
    history: tuple[str, ...]


def price(request: BookingRequest, catalog: Mapping[str, CatalogItem]) -> tuple[ServiceItem, ...]:
    """The requested services with their prices, or :class:`BookingRefused`."""
    items = []
    for name in request.service_names:
        item = catalog.get(name)
        if item is None:
            raise BookingRefused(f"Service '{name}' does not exist")
        if not item.offered_to(request.gender):
            raise BookingRefused(
                f"Service '{name}' is not available for gender '{request.gender.value}'"
            )
        items.append(ServiceItem(name=item.name, price=item.price))
    return tuple(items)


def create(
    request: BookingRequest,
    catalog: Mapping[str, CatalogItem],
    now: dt.datetime,
    *,
    booking_id: uuid.UUID,
    trace_id: str,
) -> NewBooking:
    """A new PENDING booking and its ``booking_created`` event."""
    services = price(request, catalog)
    event = BookingCreated(
        booking_id=booking_id,
        user_id=request.user_id,
        user_name=request.user_name,
        gender=request.gender,
        dob=request.dob,
        services=services,
        base_price=sum(item.price for item in services),
        trace_id=trace_id,
        created_at=now,
    )
    return NewBooking(event, (history_entry(now, "Booking Created (Pending)"),))


# -- results ---------------------------------------------------------------------------


class ResultVerdict(StrEnum):
    APPLIED = "applied"  # the booking was PENDING: it is final now
    DUPLICATE = "duplicate"  # the result it already has, delivered again
    LATE = "late"  # the booking left PENDING first (swept, cancelled): recorded only
    CONFLICTING = "conflicting"  # the booking has another result: left as it is
    UNKNOWN_BOOKING = "unknown_booking"


@dataclass(frozen=True, slots=True)
class ResultDecision:
    verdict: ResultVerdict
    transition: Transition | None = None
    orphan_events: tuple[OutboxEvent, ...] = ()  # for a booking that does not exist

    @property
    def events(self) -> tuple[OutboxEvent, ...]:
        return self.transition.events if self.transition is not None else self.orphan_events

    @property
    def releases(self) -> bool:
        """Does it give a quota unit back?"""
        return any(isinstance(e, QuotaReleased) for e in self.events)


def result_history(result: DiscountProcessed, now: dt.datetime) -> tuple[str, ...]:
    """The result's steps, then its outcome, as the reference's history lines."""
    entries = [
        history_entry(step.at, f"[{step.state.value}] {step.message}") for step in result.steps
    ]
    if result.status is BookingStatus.CONFIRMED:
        entries.append(
            history_entry(
                now, f"Discount Processed. Status: CONFIRMED. Price: {result.final_price}"
            )
        )
    else:
        entries.append(
            history_entry(now, f"Failed: {sentence(result.reason)} Status: {result.status.value}")
        )
    return tuple(entries)


def sentence(text: str | None) -> str:
    """``text`` ending with one full stop (a reason may or may not have its own)."""
    text = (text or "no reason given").rstrip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def apply_result(
    booking: Booking | None, result: DiscountProcessed, now: dt.datetime
) -> ResultDecision:
    """What a ``discount_processed`` does to the booking it names."""
    if booking is None:
        # Its booking_created was forged, or the booking was purged while the message
        # was in flight: the unit the worker reserved for it goes back.
        orphan: tuple[OutboxEvent, ...] = ()
        if result.quota_day is not None:
            orphan = (_release(result.booking_id, result, ReleaseReason.ORPHAN_RESULT),)
        return ResultDecision(ResultVerdict.UNKNOWN_BOOKING, orphan_events=orphan)
    if booking.status is BookingStatus.PENDING:
        return ResultDecision(
            ResultVerdict.APPLIED,
            Transition(
                booking.id,
                now,
                history=result_history(result, now),
                expect=BookingStatus.PENDING,
                status=result.status,
                final_price=result.final_price,
                fail_reason=result.reason,
                quota_day=result.quota_day,
                result_id=result.result_id,
                completes=True,
            ),
        )
    if booking.result_id == result.result_id:
        return ResultDecision(ResultVerdict.DUPLICATE)
    if booking.result_id is not None:
        return ResultDecision(ResultVerdict.CONFLICTING)
    summary = (
        f"CONFIRMED at {result.final_price}"
        if result.status is BookingStatus.CONFIRMED
        else f"{result.status.value}: {result.reason}"
    )
    history = [history_entry(now, f"Late discount result ignored ({summary})")]
    events: list[OutboxEvent] = []
    if result.quota_day is not None and booking.quota_day is None:
        # The booking left PENDING without this result's unit: give it back.
        events.append(_release(booking.id, result, ReleaseReason.LATE_RESULT))
        history.append(
            history_entry(
                now, f"[{SagaState.COMPENSATING.value}] Quota unit of {result.quota_day} released"
            )
        )
    return ResultDecision(
        ResultVerdict.LATE,
        Transition(
            booking.id,
            now,
            history=tuple(history),
            events=tuple(events),
            expect=booking.status,
            result_id=result.result_id,
        ),
    )


def _release(
    booking_id: uuid.UUID, result: DiscountProcessed, reason: ReleaseReason
) -> QuotaReleased:
    return QuotaReleased(
        booking_id=booking_id, day=result.quota_day, reason=reason, result_id=result.result_id
    )


# -- cancel ----------------------------------------------------------------------------


class CancelVerdict(StrEnum):
    CANCELLED = "cancelled"
    ALREADY_CANCELLED = "already_cancelled"  # a repeat: answered like the first
    NOT_CANCELLABLE = "not_cancellable"  # REJECTED: there is nothing to cancel


@dataclass(frozen=True, slots=True)
class CancelDecision:
    verdict: CancelVerdict
    previous: BookingStatus
    transition: Transition | None = None


def cancel(booking: Booking, now: dt.datetime) -> CancelDecision:
    """Cancel a PENDING or CONFIRMED booking, giving back the quota unit it may hold."""
    if booking.status is BookingStatus.CANCELLED:
        return CancelDecision(CancelVerdict.ALREADY_CANCELLED, booking.status)
    if booking.status not in CANCELLABLE:
        return CancelDecision(CancelVerdict.NOT_CANCELLABLE, booking.status)
    note = f"Booking Cancelled (was {booking.status.value})"
    if booking.quota_day is not None:
        note += f"; quota unit of {booking.quota_day} released"
    events: tuple[OutboxEvent, ...] = ()
    # A PENDING booking's unit, if the worker reserved one, goes back when its result
    # arrives (the late path): only that result can vouch for the release.
    if booking.quota_day is not None:
        events = (
            QuotaReleased(
                booking_id=booking.id,
                day=booking.quota_day,
                reason=ReleaseReason.CANCELLED,
                result_id=booking.result_id,
            ),
        )
    return CancelDecision(
        CancelVerdict.CANCELLED,
        booking.status,
        Transition(
            booking.id,
            now,
            history=(history_entry(now, note),),
            events=events,
            expect=booking.status,
            status=BookingStatus.CANCELLED,
            quota_day=None,
            completes=booking.status is BookingStatus.PENDING,
        ),
    )


# -- the timeout sweep -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeout:
    """What the sweep does to every booking PENDING since before ``cutoff``.

    The sweep is one statement over all of them, so the rule is given once for
    the lot. It emits no event: a unit the worker may have reserved goes back
    when the booking's result arrives, late (see the module's docstring).
    """

    cutoff: dt.datetime
    at: dt.datetime
    status: BookingStatus = BookingStatus.REJECTED
    fail_reason: str = TIMEOUT_REASON
    history: tuple[str, ...] = field(default=())


def time_out(pending_timeout: dt.timedelta, now: dt.datetime) -> Timeout:
    """The rule for bookings left PENDING longer than ``pending_timeout``."""
    return Timeout(
        cutoff=now - pending_timeout,
        at=now,
        history=(history_entry(now, f"Failed: {sentence(TIMEOUT_REASON)} Status: REJECTED"),),
    )
